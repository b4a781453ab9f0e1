// Per-module EigenLoRAx kernels behind the async boundary.
#include <vector>

#include "../core/subspace.h"
#include "job.h"
#include "op_args.h"

namespace eigenlorax::addon {

void registerSubspaceStream(Napi::Env env, Napi::Object exports);

// Shared with subspace_stream_jobs.cpp: the adapters list, the build's outputs, its result.
std::vector<FactorPair> readSubspaceAdapters(Napi::Env env, const Napi::Object& args, Keep& keep, Overlaps& overlaps) {
  const Napi::Array list = readArray(env, args, "adapters");
  std::vector<FactorPair> pairs;
  for (uint32_t i = 0; i < list.Length(); ++i) {
    const std::string name = "adapters[" + std::to_string(i) + "]";
    const Napi::Value item = list.Get(i);
    if (!item.IsObject()) badArgument(env, name, "an object { A, B, scale }", item);
    const Napi::Object o = item.As<Napi::Object>();
    FactorPair p;
    p.a = readFactorValue(env, o.Get("A"), name + ".A", keep, overlaps);
    p.b = readFactorValue(env, o.Get("B"), name + ".B", keep, overlaps);
    p.scale = readScaleValue(env, o.Get("scale"), name + ".scale");
    pairs.push_back(p);
  }
  return pairs;
}

ModuleSubspaceOutputs readSubspaceOutputs(Napi::Env env, const Napi::Object& args, Keep& keep, Overlaps& overlaps) {
  ModuleSubspaceOutputs out;
  out.componentsA = readOutMatrix(env, args, "componentsA", keep, overlaps);
  out.componentsB = readOutMatrix(env, args, "componentsB", keep, overlaps);
  out.singularA = const_cast<float*>(
      readVector(env, args, "singularA", static_cast<size_t>(out.componentsA.cols), false, true, keep, overlaps));
  out.singularB = const_cast<float*>(
      readVector(env, args, "singularB", static_cast<size_t>(out.componentsB.cols), false, true, keep, overlaps));
  out.meanA = const_cast<float*>(
      readVector(env, args, "meanA", static_cast<size_t>(out.componentsA.rows), true, true, keep, overlaps));
  out.meanB = const_cast<float*>(
      readVector(env, args, "meanB", static_cast<size_t>(out.componentsB.rows), true, true, keep, overlaps));
  return out;
}

Napi::Value subspaceInfoResult(Napi::Env env, const ModuleSubspaceInfo& info) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("energyA", Napi::Number::New(env, info.energyA));
  out.Set("energyB", Napi::Number::New(env, info.energyB));
  Napi::Float64Array norms = Napi::Float64Array::New(env, info.norms.size());
  for (size_t i = 0; i < info.norms.size(); ++i) norms[i] = info.norms[i];
  out.Set("norms", norms);
  return out;
}

namespace {

constexpr int64_t kMaxSafe = 9007199254740991LL;

std::vector<MatView> readOutMatrices(Napi::Env env, const Napi::Object& args, const char* name, Keep& keep,
                                     Overlaps& overlaps) {
  const Napi::Array list = readArray(env, args, name);
  std::vector<MatView> out;
  for (uint32_t i = 0; i < list.Length(); ++i) {
    out.push_back(readOutMatrixValue(env, list.Get(i), std::string(name) + "[" + std::to_string(i) + "]", keep,
                                     overlaps));
  }
  return out;
}

ModuleBasis readBasis(Napi::Env env, const Napi::Object& args, Keep& keep, Overlaps& overlaps) {
  ModuleBasis basis;
  basis.componentsA = readMatrix(env, args, "componentsA", keep, overlaps);
  basis.componentsB = readMatrix(env, args, "componentsB", keep, overlaps);
  basis.meanA = readVector(env, args, "meanA", static_cast<size_t>(basis.componentsA.rows), true, false, keep, overlaps);
  basis.meanB = readVector(env, args, "meanB", static_cast<size_t>(basis.componentsB.rows), true, false, keep, overlaps);
  return basis;
}

class BuildModuleJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    // Factors in files are read by the build itself, adapter by adapter (FactorLoader).
    keep.deferFileReads();
    adapters_ = readSubspaceAdapters(env, args, keep, overlaps);
    for (const FactorPair& p : adapters_) {
      fileA_.push_back(p.a.data == nullptr ? nextFile_++ : -1);
      fileB_.push_back(p.b.data == nullptr ? nextFile_++ : -1);
    }
    options_.stacking = readStacking(env, args);
    options_.weighting = readWeighting(env, args);
    options_.center = args.Get("center").ToBoolean();
    options_.oversample = readInteger(env, args, "oversample", 0, kMaxSafe);
    options_.powerIters = static_cast<int>(readInteger(env, args, "powerIters", 0, 1000));
    options_.seed = static_cast<uint64_t>(readInteger(env, args, "seed", 0, kMaxSafe));
    out_ = readSubspaceOutputs(env, args, keep, overlaps);
    // Optional: project every adapter on the result in the same call.
    const Napi::Value project = args.Get("project");
    if (!project.IsUndefined() && !project.IsNull()) {
      const Napi::Object p = requireObject(env, project, "project");
      project_.alphas = readOutMatrices(env, p, "alphas", keep, overlaps);
      project_.betas = readOutMatrices(env, p, "betas", keep, overlaps);
      project_.norms = readFloat64Out(env, p, "norms", adapters_.size(), keep, overlaps);
      project_.errors = readFloat64Out(env, p, "errors", adapters_.size(), keep, overlaps);
      projecting_ = true;
    }
    overlaps.check(env);
    checkNow(env, [&] { checkModuleSubspace(adapters_, options_, out_, projection()); });
  }

 protected:
  void run() override {
    // Adapter i's factors read into this thread's buffers (kept for the next adapter).
    const FactorLoader load = [this](size_t i) {
      thread_local std::vector<float> a, b;
      FactorPair p = adapters_[i];
      const auto read = [this](long file, ConstMatView& m, std::vector<float>& buffer) {
        if (file < 0) return;
        buffer.resize(static_cast<size_t>(m.rows * m.cols));
        keep.readDeferred(static_cast<size_t>(file), buffer.data());
        m.data = buffer.data();
      };
      read(fileA_[i], p.a, a);
      read(fileB_[i], p.b, b);
      return p;
    };
    info_ = buildModuleSubspace(adapters_, options_, out_, projection(), nextFile_ > 0 ? &load : nullptr);
  }
  const ModuleProjectionOutputs* projection() const { return projecting_ ? &project_ : nullptr; }
  Napi::Value result(Napi::Env env) override { return subspaceInfoResult(env, info_); }

 private:
  std::vector<FactorPair> adapters_;
  // Which deferred file input holds each adapter's A and B (-1: given in memory). The
  // inputs are numbered in the order they were read: A, then B, adapter by adapter.
  std::vector<long> fileA_, fileB_;
  long nextFile_ = 0;
  ModuleSubspaceOptions options_;
  ModuleSubspaceOutputs out_;
  ModuleProjectionOutputs project_;
  bool projecting_ = false;
  ModuleSubspaceInfo info_;
};

class ProjectModuleJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    adapters_ = readSubspaceAdapters(env, args, keep, overlaps);
    stacking_ = readStacking(env, args);
    basis_ = readBasis(env, args, keep, overlaps);
    alphas_ = readOutMatrices(env, args, "alphas", keep, overlaps);
    betas_ = readOutMatrices(env, args, "betas", keep, overlaps);
    norms_ = readFloat64Out(env, args, "norms", adapters_.size(), keep, overlaps);
    errors_ = readFloat64Out(env, args, "errors", adapters_.size(), keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkProjectModule(adapters_, basis_, alphas_, betas_); });
  }

 protected:
  void run() override { projectModule(adapters_, stacking_, basis_, alphas_, betas_, norms_, errors_); }

 private:
  std::vector<FactorPair> adapters_;
  Stacking stacking_ = Stacking::Canonical;
  ModuleBasis basis_;
  std::vector<MatView> alphas_, betas_;
  double* norms_ = nullptr;
  double* errors_ = nullptr;
};

class ReconstructJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    basis_ = readBasis(env, args, keep, overlaps);
    alpha_ = readMatrix(env, args, "alpha", keep, overlaps);
    beta_ = readMatrix(env, args, "beta", keep, overlaps);
    a_ = readOutMatrix(env, args, "A", keep, overlaps);
    b_ = readOutMatrix(env, args, "B", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkReconstruct(basis_, alpha_, beta_, a_, b_); });
  }

 protected:
  void run() override { reconstructFactors(basis_, alpha_, beta_, a_, b_); }

 private:
  ModuleBasis basis_;
  ConstMatView alpha_, beta_;
  MatView a_, b_;
};

// Queued like every job, so it runs on the compute thread that holds the scratch.
class ReleaseScratchJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo&) {}

 protected:
  void run() override { releaseScratch(); }
};

}  // namespace

void registerSubspace(Napi::Env env, Napi::Object exports) {
  exportJob<BuildModuleJob>(env, exports, "buildModuleSubspace");
  exportJob<ProjectModuleJob>(env, exports, "projectModule");
  exportJob<ReconstructJob>(env, exports, "reconstructFactors");
  exportJob<ReleaseScratchJob>(env, exports, "releaseScratch");
  registerSubspaceStream(env, exports);
}

}  // namespace eigenlorax::addon
