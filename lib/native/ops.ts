/**
 * The native boundary for library code: one typed wrapper per addon operation, every
 * asynchronous one through `callNative`. Feature modules import these, never the raw
 * addon (lib/native.ts).
 *
 * Operations that run on both backends take the device first; their matrix inputs may then
 * be device operands (DeviceMatrix.operand) when it is 'cuda'.
 */
import { EigenLoraxError, withCallerStack } from '../errors.js';
import { matrix, type Matrix } from '../matrix.js';
import { native, type NativeAddon, type NativeDevice, type NativeDeviceOperand } from '../native.js';

export type {
  NativeCudaStatus,
  NativeDevice,
  NativeDeviceOperand,
  NativeFactorPair,
  NativeFileFactor,
  NativeModulePair,
  NativeModelLayer,
  NativeOrder,
  NativePairCache,
  NativeStacking,
  NativeWeighting,
  OrderName,
} from '../native.js';
type Args<K extends keyof NativeAddon> = Parameters<NativeAddon[K]>[0];
type Result<K extends keyof NativeAddon> = ReturnType<NativeAddon[K]>;

/**
 * Starts a native call at once (so a device matrix is held before the caller can dispose
 * of it) and appends the caller's stack, captured now, to its error: the addon settles
 * from the compute thread's hand-back (native/addon/dispatch.h), where no JavaScript stack
 * exists. Anything the addon throws that is not already an EigenLoraxError becomes one
 * (ERR_INTERNAL), with the original as cause.
 */
export function callNative<T>(call: () => Promise<T>): Promise<T> {
  const callSite = new Error();
  let promise: Promise<T>;
  try {
    promise = call();
  } catch (error) {
    promise = Promise.reject(error as Error);
  }
  return withCallerStack(promise.catch(asEigenLoraxError), callSite);
}

function asEigenLoraxError(error: unknown): never {
  if (error instanceof EigenLoraxError) throw error;
  const wrapped = new EigenLoraxError(`native call failed: ${error instanceof Error ? error.message : String(error)}`, 'ERR_INTERNAL');
  wrapped.cause = error;
  throw wrapped;
}

// ---- runtime
export { addonPath, addonKind } from '../native.js';
export const buildInfo = (): ReturnType<NativeAddon['buildInfo']> => native.buildInfo();
export const setThreads = (threads: number): void => native.setThreads(threads);
export const getThreads = (): number => native.getThreads();
export const ownedBuffer = (bytes: number, zeroed: boolean): ArrayBuffer => native.ownedBuffer(bytes, zeroed);

/** Below this many bytes an array is copied for a job faster than owned memory is made. */
const OWNED_MIN_BYTES = 64 << 10;

/**
 * A zero-filled matrix in memory the addon owns when it is large enough to matter, which
 * jobs then read and write without copying it (native/addon/owned_buffers.h): for buffers a loop
 * passes to the kernels again and again (a model's weights, its activations). An ordinary
 * one when small, or where the runtime refuses native-backed buffers (Electron's sandbox).
 */
export function ownedMatrix(rows: number, cols: number): Matrix {
  const bytes = rows * cols * 4;
  if (bytes >= OWNED_MIN_BYTES) {
    try {
      return { rows, cols, data: new Float32Array(native.ownedBuffer(bytes, true)) };
    } catch {
      // refused, or no memory there: an ordinary array below (which throws if there is none either)
    }
  }
  return matrix(rows, cols);
}

// ---- linear algebra
export const rsvd = (device: NativeDevice, args: Args<'rsvd'>): Result<'rsvd'> => callNative(() => native.rsvd({ ...args, device }));
export const orthonormalize = (args: Args<'orthonormalize'>): Result<'orthonormalize'> => callNative(() => native.orthonormalize(args));
export const completeBasis = (args: Args<'completeBasis'>): Result<'completeBasis'> => callNative(() => native.completeBasis(args));
export const convert = (args: Args<'convert'>): Result<'convert'> => callNative(() => native.convert(args));

// ---- layers
export const loraForward = (device: NativeDevice, args: Args<'loraForward'>): Result<'loraForward'> =>
  callNative(() => native.loraForward({ ...args, device }));
export const loraBackward = (device: NativeDevice, args: Args<'loraBackward'>): Result<'loraBackward'> =>
  callNative(() => native.loraBackward({ ...args, device }));
export const eigenLoraForward = (device: NativeDevice, args: Args<'eigenLoraForward'>): Result<'eigenLoraForward'> =>
  callNative(() => native.eigenLoraForward({ ...args, device }));
export const eigenLoraBackward = (device: NativeDevice, args: Args<'eigenLoraBackward'>): Result<'eigenLoraBackward'> =>
  callNative(() => native.eigenLoraBackward({ ...args, device }));
export const chooseOrder = (args: Args<'chooseOrder'>): ReturnType<NativeAddon['chooseOrder']> => native.chooseOrder(args);
export const linearForward = (args: Args<'linearForward'>): Result<'linearForward'> => callNative(() => native.linearForward(args));
export const linearBackward = (args: Args<'linearBackward'>): Result<'linearBackward'> => callNative(() => native.linearBackward(args));
export const addLowRank = (args: Args<'addLowRank'>): Result<'addLowRank'> => callNative(() => native.addLowRank(args));

// ---- adapter banks (serving)
export const eigenBankApply = (device: NativeDevice, args: Args<'eigenBankApply'>): Result<'eigenBankApply'> =>
  callNative(() => native.eigenBankApply({ ...args, device }));
export const loraBankApply = (device: NativeDevice, args: Args<'loraBankApply'>): Result<'loraBankApply'> =>
  callNative(() => native.loraBankApply({ ...args, device }));

// ---- device memory (the CUDA backend)
export const cudaProbe = (): Result<'cudaProbe'> => callNative(() => native.cudaProbe());
export const cudaUpload = (args: Args<'cudaUpload'>): Result<'cudaUpload'> => callNative(() => native.cudaUpload(args));
export const cudaDownload = (args: { matrix: NativeDeviceOperand; out: Float32Array }): Result<'cudaDownload'> =>
  callNative(() => native.cudaDownload(args));
export const cudaDispose = (args: Args<'cudaDispose'>): void => native.cudaDispose(args);

// ---- subspaces
export const buildModuleSubspace = (args: Args<'buildModuleSubspace'>): Result<'buildModuleSubspace'> =>
  callNative(() => native.buildModuleSubspace(args));
export const releaseScratch = (): Result<'releaseScratch'> => callNative(() => native.releaseScratch({}));
export const projectModule = (args: Args<'projectModule'>): Result<'projectModule'> => callNative(() => native.projectModule(args));
export const reconstructFactors = (args: Args<'reconstructFactors'>): Result<'reconstructFactors'> =>
  callNative(() => native.reconstructFactors(args));
export const foldBases = (args: Args<'foldBases'>): Result<'foldBases'> => callNative(() => native.foldBases(args));
export const factorOverlaps = (args: Args<'factorOverlaps'>): Result<'factorOverlaps'> => callNative(() => native.factorOverlaps(args));
export const createPairCache = (args: Args<'createPairCache'>): ReturnType<NativeAddon['createPairCache']> => native.createPairCache(args);
export const pairCacheStats: NativeAddon['pairCacheStats'] = (cache) => native.pairCacheStats(cache);
export const createModuleStream = (args: Args<'createModuleStream'>): ReturnType<NativeAddon['createModuleStream']> =>
  native.createModuleStream(args);
export const moduleStreamAdd = (args: Args<'moduleStreamAdd'>): Result<'moduleStreamAdd'> => callNative(() => native.moduleStreamAdd(args));
export const moduleStreamEndPass = (args: Args<'moduleStreamEndPass'>): Result<'moduleStreamEndPass'> =>
  callNative(() => native.moduleStreamEndPass(args));
export const moduleStreamFinish = (args: Args<'moduleStreamFinish'>): Result<'moduleStreamFinish'> =>
  callNative(() => native.moduleStreamFinish(args));

// ---- training (synchronous: per-element loops over the caller's arrays)
export const trainAdamStep: NativeAddon['trainAdamStep'] = (...args) => native.trainAdamStep(...args);
export const trainSgdStep: NativeAddon['trainSgdStep'] = (...args) => native.trainSgdStep(...args);
export const trainReluForward: NativeAddon['trainReluForward'] = (x, y) => native.trainReluForward(x, y);
export const trainReluBackward: NativeAddon['trainReluBackward'] = (y, dy, dx) => native.trainReluBackward(y, dy, dx);
export const trainAllFinite: NativeAddon['trainAllFinite'] = (arrays) => native.trainAllFinite(arrays);
export const trainSoftmaxCrossEntropy: NativeAddon['trainSoftmaxCrossEntropy'] = (...args) => native.trainSoftmaxCrossEntropy(...args);
export const trainGatherRows: NativeAddon['trainGatherRows'] = (...args) => native.trainGatherRows(...args);
export const trainMeanSquaredError: NativeAddon['trainMeanSquaredError'] = (...args) => native.trainMeanSquaredError(...args);
export const trainModelForward = (args: Args<'trainModelForward'>): Result<'trainModelForward'> => callNative(() => native.trainModelForward(args));
export const trainModelBackward = (args: Args<'trainModelBackward'>): Result<'trainModelBackward'> => callNative(() => native.trainModelBackward(args));
export const trainModelStep = (args: Args<'trainModelStep'>): Result<'trainModelStep'> => callNative(() => native.trainModelStep(args));

// ---- hashing (wrapped by lib/io/sha256.ts)
export const sha256Stream = (): ReturnType<NativeAddon['sha256Stream']> => native.sha256Stream();
export const sha256Update = (args: Args<'sha256Update'>): Result<'sha256Update'> => callNative(() => native.sha256Update(args));
export const sha256Digest = (args: Args<'sha256Digest'>): Result<'sha256Digest'> => callNative(() => native.sha256Digest(args));
export const sha256Accelerated = (): boolean => native.sha256Accelerated();
