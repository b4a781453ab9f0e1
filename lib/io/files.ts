/**
 * File helpers shared by the readers and writers of lib/io: positioned reads and writes
 * that loop until done (fs reads and writes may be short, and one call moves at most
 * 2 GiB), file-system errors translated to EigenLoraxError, and atomic writes (a
 * temporary file in the destination's folder, fsync, rename; removed on any error).
 *
 * Everything goes through `fs.promises`, so the I/O runs on libuv's thread pool.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError, type ErrorCode } from '../errors.js';

/** One read or write call moves at most this many bytes (Node refuses more than 2 GiB - 1). */
const MAX_IO_CHUNK = 1 << 30;

/** An EigenLoraxError about `file` (and the tensor `key`, when there is one). */
export function fileError(code: ErrorCode, file: string, message: string, key?: string): EigenLoraxError {
  const where = key === undefined ? file : `${file}, tensor ${JSON.stringify(key)}`;
  return new EigenLoraxError(`${where}: ${message}`, code);
}

/**
 * Translates a Node file-system error: ENOENT/ENOTDIR become ERR_NOT_FOUND, everything
 * else ERR_IO. The original error is kept as `cause`. EigenLoraxErrors pass through.
 */
export function ioError(cause: unknown, file: string, doing: string): EigenLoraxError {
  if (cause instanceof EigenLoraxError) return cause;
  const sysCode = (cause as NodeJS.ErrnoException | undefined)?.code;
  const notFound = sysCode === 'ENOENT' || sysCode === 'ENOTDIR';
  const reason = notFound ? 'no such file or folder' : ((cause as Error | undefined)?.message ?? String(cause));
  const error = fileError(notFound ? 'ERR_NOT_FOUND' : 'ERR_IO', file, `cannot ${doing}: ${reason}`);
  error.cause = cause;
  return error;
}

/**
 * Reads exactly `target.byteLength` bytes at `position`. A file that ends early (it
 * shrank after its header was validated) is an ERR_IO naming the file and `key`.
 */
export async function readFully(
  handle: FileHandle,
  target: ArrayBufferView,
  position: number,
  file: string,
  key?: string,
): Promise<void> {
  const bytes = target instanceof Uint8Array ? target : new Uint8Array(target.buffer, target.byteOffset, target.byteLength);
  let done = 0;
  while (done < bytes.byteLength) {
    const length = Math.min(bytes.byteLength - done, MAX_IO_CHUNK);
    let bytesRead: number;
    try {
      ({ bytesRead } = await handle.read(bytes, done, length, position + done));
    } catch (cause) {
      throw ioError(cause, file, key === undefined ? 'read' : `read tensor ${JSON.stringify(key)}`);
    }
    if (bytesRead === 0) {
      throw fileError(
        'ERR_IO',
        file,
        `the file ended at byte ${position + done} while ${bytes.byteLength} bytes were read from byte ${position} ` +
          '(was it changed or truncated after it was opened?)',
        key,
      );
    }
    done += bytesRead;
  }
}

/** Writes all of `source` at `position`, looping over short writes and 1 GiB chunks. */
export async function writeFully(handle: FileHandle, source: ArrayBufferView, position: number, file: string): Promise<void> {
  const bytes = source instanceof Uint8Array ? source : new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  let done = 0;
  while (done < bytes.byteLength) {
    const length = Math.min(bytes.byteLength - done, MAX_IO_CHUNK);
    let bytesWritten: number;
    try {
      ({ bytesWritten } = await handle.write(bytes, done, length, position + done));
    } catch (cause) {
      throw ioError(cause, file, 'write');
    }
    if (bytesWritten === 0) throw fileError('ERR_IO', file, `write made no progress at byte ${position + done}`);
    done += bytesWritten;
  }
}

/** `.<name>.<pid>-<random>.tmp` next to `destination`: same folder, so rename is atomic. */
export function temporaryPathFor(destination: string): string {
  const suffix = `${process.pid}-${randomBytes(6).toString('hex')}`;
  return path.join(path.dirname(destination), `.${path.basename(destination)}.${suffix}.tmp`);
}

/**
 * Writes `destination` atomically: `write` fills a temporary file in the same folder
 * (opened exclusively), which is then fsynced, closed and renamed over `destination`
 * (and the folder fsynced, best effort). If `write` or any step throws, the temporary file
 * is removed and `destination` is untouched; the error is rethrown.
 */
export async function withAtomicFile<T>(destination: string, write: (handle: FileHandle, temporaryPath: string) => Promise<T>): Promise<T> {
  const target = path.resolve(destination);
  const temporary = temporaryPathFor(target);
  let handle: FileHandle;
  try {
    handle = await open(temporary, 'wx');
  } catch (cause) {
    throw ioError(cause, target, `create a temporary file in ${path.dirname(target)}`);
  }
  let closed = false;
  try {
    const result = await write(handle, temporary);
    try {
      await handle.sync();
      closed = true;
      await handle.close();
      await rename(temporary, target);
    } catch (cause) {
      throw ioError(cause, target, 'finish writing');
    }
    await syncFolder(path.dirname(target));
    return result;
  } catch (error) {
    if (!closed) await handle.close().catch(() => undefined);
    await unlink(temporary).catch(() => undefined);
    throw error;
  }
}

/** Writes a small file (JSON, text) atomically. */
export async function writeFileAtomic(destination: string, data: string | Uint8Array): Promise<void> {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  await withAtomicFile(destination, (handle) => writeFully(handle, bytes, 0, path.resolve(destination)));
}

/** Makes a rename durable where the platform allows it (Linux); ignored elsewhere. */
async function syncFolder(folder: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(folder, 'r');
    await handle.sync();
  } catch {
    // Not supported on this platform or file system: the rename itself is still atomic.
  } finally {
    await handle?.close().catch(() => undefined);
  }
}
