/**
 * File helpers shared by the readers and writers of lib/io: positioned reads and writes
 * that loop until done (fs reads and writes may be short, and one call moves at most
 * 2 GiB), file-system errors translated to EigenLoraxError, and atomic writes (a
 * temporary file in the destination's folder, fsync, rename; removed on any error).
 *
 * Everything goes through `fs.promises`, so the I/O runs on libuv's thread pool.
 */
import { randomBytes } from 'node:crypto';
import { constants, type Stats } from 'node:fs';
import { copyFile, link, lstat, mkdir, open, readdir, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError, type ErrorCode } from '../errors.js';
import { ownedBuffer } from '../native/ops.js';

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

/**
 * `.<name>.<pid>-<random>.<kind>` next to `destination`: same folder, so rename is atomic;
 * the pid lets a later write tell a leftover of a dead process from a write in progress.
 */
export function temporaryPathFor(destination: string, kind: 'tmp' | 'staging' | 'old' = 'tmp'): string {
  const suffix = `${process.pid}-${randomBytes(6).toString('hex')}`;
  return path.join(path.dirname(destination), `.${path.basename(destination)}.${suffix}.${kind}`);
}

/** Our temporary names: group 1 the destination's base name, 2 the writer's pid, 3 the kind. */
const TEMPORARY_NAME = /^\.(.+)\.(\d+)-[0-9a-f]{12}\.(tmp|staging|old)$/;

/** False only when no process `pid` exists (ESRCH); EPERM means it exists under another user. */
function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * Removes what killed writers left in `folder`: temporary files and staging folders of
 * processes that no longer exist. A `.old` folder (the previous version during a folder
 * swap) is renamed back when its destination is missing (the writer died between the two
 * renames), else removed. Best effort: a leftover that cannot be removed stays. Our own
 * and live processes' files are never touched (a pid reused by another process keeps its
 * leftovers until that process ends).
 */
export async function cleanStaleTemporaries(folder: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(folder);
  } catch {
    return;
  }
  for (const name of names) {
    const m = TEMPORARY_NAME.exec(name);
    if (m === null || processAlive(Number(m[2]))) continue;
    const leftover = path.join(folder, name);
    if (m[3] === 'old') {
      const destination = path.join(folder, m[1] as string);
      if (!(await exists(destination).catch(() => true))) {
        await rename(leftover, destination).catch(() => undefined);
        continue;
      }
    }
    await rm(leftover, { recursive: true, force: true }).catch(() => undefined);
  }
}

/**
 * Folders this process cleaned of leftovers lately, and when. Writing a file next to
 * thousands of others (a build's coefficients) listed the whole folder once per file,
 * quadratic in the files (4096 files took 1.2 ms a file against 0.55 ms at 1024). A
 * leftover of a writer that dies after the cleaning waits for the next one; it is in
 * nobody's way meanwhile (temporary names carry the writer's pid and a random suffix).
 */
const cleanedAt = new Map<string, number>();
const CLEAN_AGAIN_AFTER_MS = 10_000;

/** {@link cleanStaleTemporaries}, unless this process did it in the last 10 s. */
async function cleanStaleTemporariesLately(folder: string): Promise<void> {
  const now = Date.now();
  const last = cleanedAt.get(folder);
  if (last !== undefined && now - last < CLEAN_AGAIN_AFTER_MS) return;
  if (cleanedAt.size >= 1024) {
    for (const [name, at] of cleanedAt) if (now - at >= CLEAN_AGAIN_AFTER_MS) cleanedAt.delete(name);
  }
  cleanedAt.set(folder, now);
  await cleanStaleTemporaries(folder);
}

/**
 * True when something (of any kind) is at `file`; false when nothing is (ENOENT, ENOTDIR).
 * Other failures (a folder that cannot be read) are an ERR_IO, not a "no".
 */
export async function exists(file: string): Promise<boolean> {
  return (await kindOf(file)) !== 'missing';
}

/** What is at `file` (symbolic links followed): a regular file, a folder, something else, or nothing. */
export async function kindOf(file: string): Promise<'file' | 'folder' | 'other' | 'missing'> {
  let stats: Stats;
  try {
    stats = await stat(file);
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return 'missing';
    throw ioError(cause, file, 'look at the path');
  }
  return stats.isFile() ? 'file' : stats.isDirectory() ? 'folder' : 'other';
}

function kindName(stats: Stats): string {
  if (stats.isDirectory()) return 'a folder';
  if (stats.isFIFO()) return 'a FIFO (named pipe)';
  if (stats.isSocket()) return 'a socket';
  if (stats.isCharacterDevice() || stats.isBlockDevice()) return 'a device';
  return 'not a regular file';
}

/** Read buffers of at least this many bytes come from the addon's large-buffer allocator. */
const LARGE_READ_BYTES = 8 << 20;

/**
 * A buffer of `bytes` bytes for a read to fill entirely; its contents are undefined until
 * then. A large one is in huge pages where the kernel offers them (native/core/
 * large_buffers.h): here a fresh 4 KiB page costs about 8 us at its first touch, so a
 * fresh 38 MB buffer cost more to read a file into (110 ms) and to hash the first time
 * (70 ms) than the same work on memory already touched (4 ms, 24 ms).
 */
export function readBuffer(bytes: number): Uint8Array {
  if (bytes >= LARGE_READ_BYTES) {
    try {
      return new Uint8Array(ownedBuffer(bytes, false));
    } catch {
      // A runtime that refuses native-backed buffers (Electron's sandbox), or no memory
      // left there: an ordinary buffer (which throws RangeError if there is none either).
    }
  }
  return new Uint8Array(bytes);
}

/**
 * Opens `file` for reading, refusing anything but a regular file with an ERR_IO naming it;
 * returns the handle and the file's size. O_NONBLOCK keeps the open of a FIFO from waiting
 * for a writer forever; the check is an fstat of the opened descriptor, so the file cannot
 * be swapped between check and use (and its size is that descriptor's: no second fstat,
 * each a trip through libuv's pool).
 */
export async function openRegularFile(file: string, doing = 'open'): Promise<{ handle: FileHandle; size: number }> {
  let handle: FileHandle;
  try {
    handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (cause) {
    // ENXIO: a socket (or a FIFO opened for writing without a reader).
    if ((cause as NodeJS.ErrnoException).code === 'ENXIO') throw fileError('ERR_IO', file, `cannot ${doing}: it is not a regular file`);
    throw ioError(cause, file, doing);
  }
  let stats: Stats;
  try {
    stats = await handle.stat();
  } catch (cause) {
    await handle.close().catch(() => undefined);
    throw ioError(cause, file, doing);
  }
  if (!stats.isFile()) {
    await handle.close().catch(() => undefined);
    throw fileError('ERR_IO', file, `cannot ${doing}: it is ${kindName(stats)}, not a regular file`);
  }
  return { handle, size: stats.size };
}

/**
 * Reads a whole regular file (refusing FIFOs, devices, folders as {@link openRegularFile}
 * does), at most `maxBytes` (a longer file is `tooLong(size)`, thrown).
 */
export async function readRegularFile(
  file: string,
  doing: string,
  limit?: { maxBytes: number; tooLong: (size: number) => Error },
): Promise<Buffer> {
  const { handle, size } = await openRegularFile(file, doing);
  try {
    if (limit !== undefined && size > limit.maxBytes) throw limit.tooLong(size);
    const bytes = Buffer.alloc(size);
    await readFully(handle, bytes, 0, file);
    return bytes;
  } finally {
    await handle.close().catch(() => undefined);
  }
}

/**
 * Writes `destination` atomically: `write` fills a temporary file in the same folder
 * (opened exclusively), which is then fsynced, closed and renamed over `destination`
 * (and the folder fsynced, best effort). If `write` or any step throws, the temporary file
 * is removed and `destination` is untouched; the error is rethrown. Leftovers of dead
 * writers in the folder are removed first (at most every 10 s per folder and process).
 */
export async function withAtomicFile<T>(destination: string, write: (handle: FileHandle, temporaryPath: string) => Promise<T>): Promise<T> {
  const target = path.resolve(destination);
  await cleanStaleTemporariesLately(path.dirname(target));
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

/** Test hooks: `afterMoveOld` runs between the two renames of a folder swap (a crash point). */
export const atomicWriteHooks: { afterMoveOld?: () => void | Promise<void> } = {};

/** One file of a folder written by {@link writeFolderAtomic}. */
export interface FolderFile {
  /** The file name inside the folder (no separators). */
  name: string;
  /** Writes the complete file at `file` (a path inside the staging folder). */
  write: (file: string) => Promise<void>;
}

/**
 * Writes the files of `folder` all-or-nothing, so that a reader (or a crash) sees either
 * the old set or the new set, never a mix:
 *  1. the files are written into a staging folder next to `folder` (same parent, so the
 *     renames below stay on one file system); the other regular files of an existing
 *     `folder` are hard-linked (or copied) in, so they survive the swap;
 *  2. `folder` is renamed to `.<name>.<pid>-<hex>.old`, the staging folder to `folder`,
 *     and the old one removed. Linux has no atomic exchange of two folders reachable
 *     from Node (renameat2 RENAME_EXCHANGE), hence the two renames; a process killed
 *     between them leaves no `folder` and a `.old` that the next write, or a reader
 *     calling {@link recoverInterruptedSwap}, renames back.
 * A `folder` that holds subfolders or special files is not swapped (they could not be
 * carried over): the staged files are renamed into it one by one, in the order given;
 * readers then rely on the digests each pair records to detect a torn set.
 * On any error the staging folder is removed and `folder` is as it was (restored if it
 * had been moved aside). Returns the written paths.
 */
export async function writeFolderAtomic(folder: string, files: readonly FolderFile[]): Promise<string[]> {
  const target = path.resolve(folder);
  const parent = path.dirname(target);
  let createdParent: string | undefined;
  try {
    createdParent = await mkdir(parent, { recursive: true });
  } catch (cause) {
    throw ioError(cause, parent, 'create the folder');
  }
  await cleanStaleTemporaries(parent);
  const kind = await kindOf(target);
  if (kind === 'file' || kind === 'other') throw fileError('ERR_INVALID_ARGUMENT', target, 'expected a folder (or nothing) here');
  const staging = temporaryPathFor(target, 'staging');
  const old = temporaryPathFor(target, 'old');
  let movedAside = false;
  try {
    try {
      await mkdir(staging);
    } catch (cause) {
      throw ioError(cause, parent, 'create a staging folder');
    }
    for (const f of files) await f.write(path.join(staging, f.name));
    const swap = kind === 'missing' || (await carryOver(target, staging, new Set(files.map((f) => f.name))));
    if (!swap) {
      for (const f of files) await renameOrFail(path.join(staging, f.name), path.join(target, f.name), target);
      await syncFolder(target);
      await rm(staging, { recursive: true, force: true }).catch(() => undefined);
      return files.map((f) => path.join(target, f.name));
    }
    if (kind === 'folder') {
      await renameOrFail(target, old, target);
      movedAside = true;
      await atomicWriteHooks.afterMoveOld?.();
    }
    await renameOrFail(staging, target, target);
    movedAside = false;
    await syncFolder(parent);
    await rm(old, { recursive: true, force: true }).catch(() => undefined);
    return files.map((f) => path.join(target, f.name));
  } catch (error) {
    if (movedAside) await rename(old, target).catch(() => undefined);
    await rm(staging, { recursive: true, force: true }).catch(() => undefined);
    if (createdParent !== undefined) await rm(createdParent, { recursive: true, force: true }).catch(() => undefined);
    throw error;
  }
}

async function renameOrFail(from: string, to: string, folder: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (cause) {
    throw ioError(cause, folder, 'move the written files into place');
  }
}

/**
 * Links (or copies) the regular files of `from` that are not being replaced into
 * `staging`. False when `from` holds something that cannot be carried (a subfolder).
 */
async function carryOver(from: string, staging: string, replaced: ReadonlySet<string>): Promise<boolean> {
  let names: string[];
  try {
    names = await readdir(from);
  } catch (cause) {
    throw ioError(cause, from, 'list the folder');
  }
  const keep: string[] = [];
  for (const name of names) {
    if (replaced.has(name)) continue;
    let stats: Stats;
    try {
      stats = await lstat(path.join(from, name));
    } catch (cause) {
      throw ioError(cause, path.join(from, name), 'look at the file');
    }
    if (!stats.isFile()) return false;
    keep.push(name);
  }
  for (const name of keep) {
    const source = path.join(from, name);
    const copy = path.join(staging, name);
    try {
      await link(source, copy).catch(() => copyFile(source, copy));
    } catch (cause) {
      throw ioError(cause, source, 'carry the file over to the new version of its folder');
    }
  }
  return true;
}

/**
 * Called by readers of folders written by {@link writeFolderAtomic} when `folder` is
 * missing: renames back the previous version left aside by a writer that died in the
 * middle of a swap (see there). Does nothing when there is none.
 */
export async function recoverInterruptedSwap(folder: string): Promise<void> {
  const target = path.resolve(folder);
  if (await exists(target).catch(() => true)) return;
  await cleanStaleTemporaries(path.dirname(target));
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
