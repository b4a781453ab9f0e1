// ArrayBuffers whose memory the addon owns (from allocateLarge), which jobs read without
// copying. Keep (args.h) copies every other typed array a job reads, because Node-API
// cannot hold JavaScript's memory (see there). For these buffers it does not need to: the
// memory is counted, JavaScript holding one count (given back by the ArrayBuffer's
// finalizer) and each job that reads it another, so it is freed when the last of them lets
// go, whatever JavaScript does with the buffer meanwhile (collect, detach, transfer).
//
// A job reads and writes such arrays in place: JavaScript that writes into one during the
// call races with the kernel, and one that reads an output sees it change (the memory
// stays valid either way). A call that fails may have written part of an owned output,
// where an ordinary output is written only by a call that succeeds. The library's training
// buffers (weights, activations, batches, gradients) are only touched between calls.
#pragma once
#include <napi.h>

#include <cstddef>

namespace eigenlorax::addon {

struct OwnedBlock;

// A new ArrayBuffer of `bytes` bytes over owned memory, zero-filled when asked (otherwise
// its contents are undefined). Throws the library's ERR_OUT_OF_MEMORY, or whatever the
// runtime throws when it refuses native-backed buffers (Electron's sandbox).
Napi::ArrayBuffer ownedBuffer(Napi::Env env, size_t bytes, bool zeroed);

// The owned block holding [data, data + bytes), counted once more for the caller, or null
// when that range is not inside one. Any thread.
OwnedBlock* lendOwned(const void* data, size_t bytes);
// Gives back a count from lendOwned; the last one frees the block. Any thread.
void returnOwned(OwnedBlock* block) noexcept;

}  // namespace eigenlorax::addon
