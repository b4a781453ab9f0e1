/**
 * The CUDA backend (native/cuda): which device runs an operation, device-resident
 * matrices, and what `eigenlorax devices` reports.
 *
 * Operations that run on both backends take `device: 'auto' | 'cpu' | 'cuda'`:
 * - not given: the GPU when any operand is a {@link DeviceMatrix}, else the CPU;
 * - 'cpu': the CPU (device matrices are refused: call `toHost()` first);
 * - 'cuda': the GPU, or ERR_DEVICE_UNAVAILABLE with the reason (no plugin in this build,
 *   no driver, no device, no cuBLAS);
 * - 'auto': the GPU when it is available, else the CPU.
 *
 * The GPU code is a plugin the addon loads only when a GPU is asked for, so none of this
 * costs anything, or needs CUDA, on a machine without one.
 */
import { fromFloat32 } from './dtype.js';
import { EigenLoraxError } from './errors.js';
import { checkMatrix, matrix, type Matrix } from './matrix.js';
import * as ops from './native/ops.js';
import type { NativeCudaStatus, NativeDeviceOperand } from './native/ops.js';
import { knownKeys, object, oneOf } from './validate.js';

export type Device = 'auto' | 'cpu' | 'cuda';
export type DeviceDtype = 'f32' | 'f16' | 'bf16';
const devices = ['auto', 'cpu', 'cuda'] as const;
const dtypes = ['f32', 'f16', 'bf16'] as const;

/** What the CUDA backend found; `reason` says why it cannot run when `available` is false. */
export type CudaStatus = NativeCudaStatus;

/**
 * A matrix in GPU memory (cudaMalloc, never managed memory), kept there between calls, so
 * a base weight or a subspace is copied once. f16/bf16 storage halves the memory; every
 * product still accumulates in f32. Free it with `dispose()` (also done, later, when it is
 * garbage-collected); a queued operation that uses it keeps it alive until it ends.
 */
export class DeviceMatrix {
  readonly device = 'cuda' as const;
  readonly rows: number;
  readonly cols: number;
  readonly dtype: DeviceDtype;
  /** Bytes of device memory it holds. */
  readonly bytes: number;
  #handle: unknown;

  /** @internal Use {@link toDevice}. */
  constructor(handle: unknown, rows: number, cols: number, dtype: DeviceDtype) {
    this.#handle = handle;
    this.rows = rows;
    this.cols = cols;
    this.dtype = dtype;
    this.bytes = rows * cols * (dtype === 'f32' ? 4 : 2);
  }

  get disposed(): boolean {
    return this.#handle === null;
  }

  /** Frees the device memory (once the operations already queued with it end). Idempotent. */
  dispose(): void {
    if (this.#handle === null) return;
    ops.cudaDispose({ handle: this.#handle });
    this.#handle = null;
  }

  /** A copy on the host, widened to f32. */
  async toHost(): Promise<Matrix> {
      const out = matrix(this.rows, this.cols);
    await ops.cudaDownload({ matrix: this.operand('matrix'), out: out.data });
    return out;
  }

  /** @internal What the addon reads. */
  operand(name: string): NativeDeviceOperand {
    if (this.#handle === null) throw new EigenLoraxError(`${name}: the device matrix was disposed of`, 'ERR_INVALID_ARGUMENT');
    return { rows: this.rows, cols: this.cols, handle: this.#handle };
  }
}

/** A matrix on the host or on the GPU. */
export type Operand = Matrix | DeviceMatrix;

/** Copies a host matrix to the GPU, stored as `dtype` (default f32; f16/bf16 rounded to nearest even). */
export async function toDevice(input: Matrix, options: { dtype?: DeviceDtype } = {}): Promise<DeviceMatrix> {
  const m = checkMatrix(input, 'matrix');
  const o = object(options, 'options');
  knownKeys(o, 'options', ['dtype']);
  const dtype = oneOf(o.dtype ?? 'f32', 'options.dtype', dtypes);
  const data = dtype === 'f32' ? m.data : await fromFloat32(m.data, dtype);
  const handle = await ops.cudaUpload({ rows: m.rows, cols: m.cols, dtype, data });
  return new DeviceMatrix(handle, m.rows, m.cols, dtype);
}

let status: Promise<CudaStatus> | null = null;

/**
 * Probes the CUDA backend (loads the plugin, the driver and cuBLAS, creates the context on
 * first use; later calls refresh the free memory). Never rejects for a missing GPU: it
 * says why in `reason`.
 */
export async function cudaStatus(): Promise<CudaStatus> {
  const probe = ops.cudaProbe();
  status = probe;
  return probe;
}

async function cudaAvailable(): Promise<boolean> {
  return (await (status ?? cudaStatus())).available;
}

/** Checks a host or device matrix (shape as checkMatrix) and returns it. */
export function checkOperand(value: unknown, name: string, shape?: { rows?: number; cols?: number }): Operand {
  if (!(value instanceof DeviceMatrix)) return checkMatrix(value, name, shape);
  if (value.disposed) throw new EigenLoraxError(`${name}: the device matrix was disposed of`, 'ERR_INVALID_ARGUMENT');
  if ((shape?.rows !== undefined && shape.rows !== value.rows) || (shape?.cols !== undefined && shape.cols !== value.cols)) {
    throw new EigenLoraxError(
      `${name}: expected shape ${shape.rows ?? '*'} x ${shape.cols ?? '*'}, received ${value.rows} x ${value.cols}`,
      'ERR_SHAPE_MISMATCH',
    );
  }
  return value;
}

/** What the addon reads for an operand. */
export function nativeOperand(op: Operand, name: string): Matrix | NativeDeviceOperand {
  return op instanceof DeviceMatrix ? op.operand(name) : op;
}


/**
 * Which backend runs a call, from its `device` option and its operands (see the module
 * comment). A plain value, not a promise, whenever the answer needs no probe, in
 * particular whenever a DeviceMatrix is among the operands: the call then reaches the
 * addon (which takes its own hold on the device memory) before any await, so a
 * `dispose()` right after the call started cannot overtake it.
 */
export function chooseDevice(option: unknown, operands: readonly unknown[]): 'cpu' | 'cuda' | Promise<'cpu' | 'cuda'> {
  const onDevice = operands.some((op) => op instanceof DeviceMatrix);
  if (option === undefined) return onDevice ? 'cuda' : 'cpu';
  const device = oneOf(option, 'options.device', devices);
  if (device === 'cpu') {
    if (onDevice) {
      throw new EigenLoraxError("options.device: 'cpu' was asked for but an operand is a device matrix (call toHost() first)", 'ERR_INVALID_ARGUMENT');
    }
    return 'cpu';
  }
  if (device === 'cuda' || onDevice) return 'cuda';
  return cudaAvailable().then((available) => (available ? 'cuda' : 'cpu'));
}

/** Starts `call` on the chosen backend: at once when the choice needs no probe (chooseDevice). */
export function onDevice<T>(option: unknown, operands: readonly unknown[], call: (device: 'cpu' | 'cuda') => Promise<T>): Promise<T> {
  const choice = chooseDevice(option, operands);
  return typeof choice === 'string' ? call(choice) : choice.then(call);
}

type OnDevice<V> = V extends DeviceMatrix ? NativeDeviceOperand : V;
/** Call arguments with every DeviceMatrix replaced by what the addon reads. */
export type DeviceArgs<T> = { [K in keyof T]: OnDevice<T[K]> };

export function deviceArgs<T extends object>(args: T): DeviceArgs<T> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(args)) out[key] = value instanceof DeviceMatrix ? value.operand(key) : value;
  return out as DeviceArgs<T>;
}
