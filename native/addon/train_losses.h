// The losses' arguments, shared by the synchronous loss calls (train_jobs.cpp) and the
// whole-step job (train_model_jobs.cpp): class labels as a Uint8Array, Uint16Array or
// Int32Array, checked against the number of classes before any loss reads them.
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "../core/optim.h"

namespace eigenlorax::addon {

struct LabelsView {
  napi_typedarray_type type = napi_int32_array;
  const void* data = nullptr;
  size_t length = 0;
  int64_t at(size_t i) const {
    switch (type) {
      case napi_uint8_array:
        return static_cast<const uint8_t*>(data)[i];
      case napi_uint16_array:
        return static_cast<const uint16_t*>(data)[i];
      default:
        return static_cast<const int32_t*>(data)[i];
    }
  }
};

// Pass 1: `value` if it is a typed array of labels, else a typed error naming `name`.
Napi::Value readLabelsValue(Napi::Env env, const Napi::Value& value, const std::string& name);
// Pass 2 (no JavaScript runs): the labels of `value`, `rows` of them, each in [0, classes).
LabelsView labelsOf(Napi::Env env, const Napi::Value& value, const std::string& name, size_t rows, size_t classes);
// softmaxCrossEntropy (core/optim.h) over checked labels of any of the three types.
LossValue softmaxCrossEntropyOf(const LabelsView& labels, const float* logits, size_t n, size_t c, float* grad);

}  // namespace eigenlorax::addon
