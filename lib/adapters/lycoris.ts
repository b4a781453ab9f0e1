/**
 * LyCORIS networks (and DoRA) share kohya's `lora_unet_` / `lora_te_` names but not its
 * math, so their files are recognised by their tensor suffixes and refused, naming the
 * algorithm, rather than misread as plain LoRA. Suffixes as LyCORIS (`lycoris/modules/*.py`)
 * saves them.
 */
import { keyError } from './common.js';

const algorithms: ReadonlyArray<readonly [RegExp, string]> = [
  [/\.hada_(w1_a|w1_b|w2_a|w2_b|t1|t2)$/, 'LoHa (hada_*)'],
  [/\.lokr_(w1|w1_a|w1_b|w2|w2_a|w2_b|t1|t2)$/, 'LoKr (lokr_*)'],
  [/\.on_input$/, 'IA3 (weight + on_input)'],
  [/\.(a1|a2|b1|b2)\.weight$/, 'GLoRA (a1, a2, b1, b2)'],
  [/\.(oft_blocks|oft_diag|oft_R|rescale)$/, 'OFT / BOFT (oft_*)'],
  [/\.lora_mid\.weight$/, 'LoCon with CP/Tucker decomposition (lora_mid)'],
  [/\.(diff|diff_b)$/, 'full-rank difference (diff)'],
  [/\.(w_norm|b_norm)$/, 'norm-layer tuning (w_norm, b_norm)'],
  [/\.(dora_scale|lora_magnitude_vector)$/, 'DoRA (dora_scale)'],
];

/** The LyCORIS algorithms whose tensors appear in `keys`, each with the first key seen. */
export function lycorisAlgorithms(keys: Iterable<string>): Array<{ algorithm: string; key: string }> {
  const found = new Map<string, string>();
  for (const key of keys) {
    for (const [regex, algorithm] of algorithms) {
      if (!found.has(algorithm) && regex.test(key)) found.set(algorithm, key);
    }
  }
  const order = algorithms.map(([, a]) => a);
  return [...found].sort(([a], [b]) => order.indexOf(a) - order.indexOf(b)).map(([algorithm, key]) => ({ algorithm, key }));
}

/** Throws ERR_ADAPTER_UNSUPPORTED naming the algorithm(s) when `keys` hold LyCORIS tensors. */
export function refuseLycoris(file: string, keys: Iterable<string>): void {
  const found = lycorisAlgorithms(keys);
  if (found.length === 0) return;
  const names = found.map((f) => f.algorithm).join(' + ');
  const what = found.length === 1 && found[0]!.algorithm.startsWith('DoRA') ? 'a DoRA adapter' : `a LyCORIS ${names} network`;
  throw keyError(
    'ERR_ADAPTER_UNSUPPORTED',
    file,
    found[0]!.key,
    `${what} is not supported; only plain LoRA (lora_down, lora_up, alpha) is read`,
  );
}
