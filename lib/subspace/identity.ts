/**
 * The sidecar (`subspace.json`) of a subspace, its tensor names, and its identity: the
 * sha256 of the sidecar's fields and of every tensor, so that a changed byte anywhere, or
 * a sidecar paired with another build's tensors, is noticed.
 */
import { Sha256Stream } from '../io/sha256.js';
import type { SubspaceSidecar } from './sidecar.js';
import type { Subspace } from './types.js';

export const SUBSPACE_FORMAT = 'eigenlorax-subspace';
/** Version of the subspace file format (and of the in-memory model). */
export const SUBSPACE_FORMAT_VERSION = 1;
export const COEFFICIENTS_FORMAT = 'eigenlorax-coefficients';
export const SUBSPACE_SIDECAR_NAME = 'subspace.json';
export const SUBSPACE_TENSORS_NAME = 'subspace.safetensors';

/** The key names of a module's tensors (DESIGN §4). */
export function subspaceKeys(module: string) {
  return {
    componentsA: `${module}.eigenlora_A.components`,
    componentsB: `${module}.eigenlora_B.components`,
    singularA: `${module}.eigenlora_A.singular_values`,
    singularB: `${module}.eigenlora_B.singular_values`,
    meanA: `${module}.eigenlora_A.mean`,
    meanB: `${module}.eigenlora_B.mean`,
    loadingsA: `${module}.eigenlora_A.loadings`,
    loadingsB: `${module}.eigenlora_B.loadings`,
  };
}

export type { SidecarModule, SubspaceSidecar } from './sidecar.js';

/** The sidecar of `subspace` (fields in a fixed order). */
export function sidecarOf(subspace: Subspace): SubspaceSidecar {
  const s = subspace.settings;
  return {
    format: SUBSPACE_FORMAT,
    formatVersion: subspace.formatVersion,
    library: { name: 'eigenlorax', version: subspace.libraryVersion },
    id: subspace.id,
    tensors: SUBSPACE_TENSORS_NAME,
    settings: {
      stacking: s.stacking,
      weighting: s.weighting,
      center: s.center,
      components: s.components === null ? null : { A: s.components.A, B: s.components.B },
      variance: s.variance,
      maxComponents: s.maxComponents === null ? null : { A: s.maxComponents.A, B: s.maxComponents.B },
      augment: { A: s.augment.A, B: s.augment.B },
      oversample: s.oversample,
      powerIters: s.powerIters,
      seed: s.seed,
    },
    baseModel: subspace.baseModel,
    sources: subspace.sources.map((src) => ({
      name: src.name,
      path: src.path,
      format: src.format,
      baseModel: src.baseModel,
      files: src.files.map((f) => ({ path: f.path, bytes: f.bytes, sha256: f.sha256 })),
    })),
    modules: [...subspace.modules.values()].map((m) => ({
      name: m.name,
      dIn: m.dIn,
      dOut: m.dOut,
      layout: m.layout,
      convKernel: m.convKernel === null ? null : [...m.convKernel],
      fanInFanOut: m.fanInFanOut,
      kA: m.kA,
      kB: m.kB,
      augmentA: m.augmentA,
      augmentB: m.augmentB,
      energyA: m.energyA,
      energyB: m.energyB,
      explainedA: m.explainedA,
      explainedB: m.explainedB,
      centered: m.meanA !== null,
      adapters: [...m.adapters],
      ranks: [...m.ranks],
    })),
  };
}

const bytesOf = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/**
 * The identity of a subspace: sha256 (hex) of its sidecar (with `id` blank) and of every
 * module's tensors (components, singular values, means) in module order. Hashed off the
 * event loop (io/sha256.ts); the arrays are read when this is called.
 */
export async function subspaceId(subspace: Subspace): Promise<string> {
  const hash = new Sha256Stream();
  await hash.update([JSON.stringify({ ...sidecarOf(subspace), id: '' })]);
  for (const m of subspace.modules.values()) {
    const parts: Array<Uint8Array | string> = [`\n${m.name}\n`];
    for (const part of [m.componentsA.data, m.componentsB.data, m.singularA, m.singularB, m.meanA, m.meanB]) {
      parts.push(part === null ? 'null' : bytesOf(part));
    }
    await hash.update(parts);
  }
  return hash.digest();
}
