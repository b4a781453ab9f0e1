# The same CPU addon as CMakeLists.txt, built with node-gyp instead of cmake-js.
# `npm run build:gyp` builds it in a scratch copy (so it does not clobber the cmake-js
# build/ folder) and CI runs the test suite against it.
{
  "targets": [
    {
      "target_name": "eigenlorax",
      "sources": [
        "native/core/dtype.cpp",
        "native/core/sha256.cpp",
        "native/core/linalg.cpp",
        "native/core/stack_products.cpp",
        "native/core/column_dots.cpp",
        "native/core/large_buffers.cpp",
        "native/core/lowrank.cpp",
        "native/core/subspace.cpp",
        "native/core/canonical.cpp",
        "native/core/subspace_stream.cpp",
        "native/core/folds.cpp",
        "native/core/multiadapter.cpp",
        "native/core/pair_cache.cpp",
        "native/core/optim.cpp",
        "native/addon/addon.cpp",
        "native/addon/args.cpp",
        "native/addon/file_inputs.cpp",
        "native/addon/dispatch.cpp",
        "native/addon/env.cpp",
        "native/addon/owned_buffers.cpp",
        "native/addon/dtype_jobs.cpp",
        "native/addon/hash_jobs.cpp",
        "native/addon/linalg_jobs.cpp",
        "native/addon/lowrank_jobs.cpp",
        "native/addon/subspace_jobs.cpp",
        "native/addon/subspace_stream_jobs.cpp",
        "native/addon/folds_jobs.cpp",
        "native/addon/multiadapter_jobs.cpp",
        "native/addon/cuda_jobs.cpp",
        "native/addon/train_jobs.cpp",
        "native/addon/train_model.cpp",
        "native/addon/train_model_jobs.cpp",
        "native/addon/device.cpp"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native/third_party/eigen"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "EIGEN_MPL2_ONLY",
        "EIGEN_NO_DEBUG",
        "EIGENLORAX_VERSION=\"<!(node -p \"require('./package.json').version\")\""
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++14"],
      "cflags_cc": ["-std=c++17", "-O3", "-fopenmp", "-fexceptions", "-fno-math-errno"],
      "ldflags": ["-fopenmp"],
      "conditions": [
        ["'<!(node -p \"process.env.EIGENLORAX_PORTABLE || ''\")'==''", {
          "cflags_cc": ["-march=native"]
        }]
      ]
    }
  ]
}
