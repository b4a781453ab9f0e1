/**
 * Image transforms for building families of related tasks from one image data set (the
 * task zoo of the experiment): rotation, scaling, shift and contrast change of small grey
 * images stored as rows (`height x width` pixels, row-major, values in [0, 1]).
 *
 * The geometric part is one affine map about the image centre, applied by bilinear
 * sampling with zeros outside the image: output pixel p' samples the input at
 * p = R(-angle) (p' - c - shift) / scale + c. Since every image gets the same map, the
 * four source pixels and weights of each output pixel are computed once. Contrast then
 * scales each image about its own mean: v' = clamp(m + contrast (v - m), 0, 1).
 */
import { EigenLoraxError } from '../errors.js';
import { checkMatrix, matrix, type Matrix } from '../matrix.js';
import { finiteNumber, integer, invalid, knownKeys, object } from '../validate.js';
import { checkDataset, type Dataset } from './dataset.js';

export interface ImageTransform {
  /** Degrees, counter-clockwise as seen on screen (rows go down). Default 0. */
  rotate?: number;
  /** Zoom about the centre (> 1 enlarges). Default 1. */
  scale?: number;
  /** [dx, dy] in pixels, right and down. Default [0, 0]. */
  shift?: [number, number];
  /** Contrast factor about each image's mean (1 keeps it, 0 flattens it). Default 1. */
  contrast?: number;
}

export interface ImageShape {
  /** Default 28. */
  height?: number;
  /** Default 28. */
  width?: number;
}

interface Resolved {
  rotate: number;
  scale: number;
  dx: number;
  dy: number;
  contrast: number;
}

function resolve(transform: ImageTransform): Resolved {
  const t = object(transform, 'transform');
  knownKeys(t, 'transform', ['rotate', 'scale', 'shift', 'contrast']);
  const scale = finiteNumber(t.scale ?? 1, 'transform.scale');
  if (!(scale > 0)) throw invalid('a number > 0', 'transform.scale', t.scale);
  const shift = t.shift ?? [0, 0];
  if (!Array.isArray(shift) || shift.length !== 2) throw invalid('[dx, dy]', 'transform.shift', shift);
  const contrast = finiteNumber(t.contrast ?? 1, 'transform.contrast');
  if (contrast < 0) throw invalid('a number >= 0', 'transform.contrast', contrast);
  return {
    rotate: finiteNumber(t.rotate ?? 0, 'transform.rotate'),
    scale,
    dx: finiteNumber(shift[0], 'transform.shift[0]'),
    dy: finiteNumber(shift[1], 'transform.shift[1]'),
    contrast,
  };
}

/** Per output pixel: four source indices (-1 outside) and their bilinear weights. */
function samplingMap(r: Resolved, height: number, width: number): { index: Int32Array; weight: Float32Array; identity: boolean } {
  const size = height * width;
  const index = new Int32Array(size * 4);
  const weight = new Float32Array(size * 4);
  const theta = (r.rotate * Math.PI) / 180;
  const cos = Math.cos(theta);
  const sin = Math.sin(theta);
  const cx = (width - 1) / 2;
  const cy = (height - 1) / 2;
  const identity = r.rotate % 360 === 0 && r.scale === 1 && r.dx === 0 && r.dy === 0;
  for (let v = 0; v < height; v++) {
    for (let u = 0; u < width; u++) {
      const qx = (u - cx - r.dx) / r.scale;
      const qy = (v - cy - r.dy) / r.scale;
      // Inverse of the on-screen counter-clockwise rotation (x right, y down).
      const x = cos * qx - sin * qy + cx;
      const y = sin * qx + cos * qy + cy;
      const x0 = Math.floor(x);
      const y0 = Math.floor(y);
      const fx = x - x0;
      const fy = y - y0;
      const k = (v * width + u) * 4;
      const taps: Array<[number, number, number]> = [
        [x0, y0, (1 - fx) * (1 - fy)],
        [x0 + 1, y0, fx * (1 - fy)],
        [x0, y0 + 1, (1 - fx) * fy],
        [x0 + 1, y0 + 1, fx * fy],
      ];
      taps.forEach(([tx, ty, w], j) => {
        const inside = tx >= 0 && tx < width && ty >= 0 && ty < height && w !== 0;
        index[k + j] = inside ? ty * width + tx : -1;
        weight[k + j] = inside ? w : 0;
      });
    }
  }
  return { index, weight, identity };
}

/** Images per chunk between yields to the event loop. */
const CHUNK = 2048;

/**
 * Applies `transform` to every row of `images` (`n x (height * width)`), into a new matrix.
 * Asynchronous only to let the event loop turn between chunks of images.
 */
export async function transformImages(images: Matrix, transform: ImageTransform, shape: ImageShape = {}): Promise<Matrix> {
  const x = checkMatrix(images, 'images');
  const s = object(shape, 'shape');
  knownKeys(s, 'shape', ['height', 'width']);
  const height = integer(s.height ?? 28, 'shape.height', 1);
  const width = integer(s.width ?? 28, 'shape.width', 1);
  const size = height * width;
  if (x.cols !== size) {
    throw new EigenLoraxError(`images: rows of ${x.cols} values are not ${height} x ${width} images`, 'ERR_SHAPE_MISMATCH');
  }
  const r = resolve(transform);
  const { index, weight, identity } = samplingMap(r, height, width);
  const out = matrix(x.rows, size);
  const src = x.data;
  const dst = out.data;
  for (let first = 0; first < x.rows; first += CHUNK) {
    const last = Math.min(x.rows, first + CHUNK);
    for (let i = first; i < last; i++) {
      const base = i * size;
      if (identity) {
        dst.set(src.subarray(base, base + size), base);
      } else {
        for (let p = 0; p < size; p++) {
          const k = p * 4;
          let v = 0;
          for (let j = 0; j < 4; j++) {
            const at = index[k + j] as number;
            if (at >= 0) v += (weight[k + j] as number) * (src[base + at] as number);
          }
          dst[base + p] = v;
        }
      }
      if (r.contrast !== 1) {
        let mean = 0;
        for (let p = 0; p < size; p++) mean += dst[base + p] as number;
        mean /= size;
        for (let p = 0; p < size; p++) {
          const v = mean + r.contrast * ((dst[base + p] as number) - mean);
          dst[base + p] = v < 0 ? 0 : v > 1 ? 1 : v;
        }
      }
    }
    if (last < x.rows) await new Promise((resolve) => setImmediate(resolve));
  }
  return out;
}

/** A data set with transformed inputs; the targets are shared with the original (not copied). */
export async function transformDataset(dataset: Dataset, transform: ImageTransform, shape: ImageShape = {}): Promise<Dataset> {
  const d = checkDataset(dataset, 'dataset');
  const inputs = await transformImages(d.inputs, transform, shape);
  return { inputs, targets: d.targets, ...(d.classes === undefined ? {} : { classes: d.classes }) };
}
