/** Data sets: the in-memory type, Fashion-MNIST, and image transforms for task families. */
export { datasetSize, checkDataset, sliceDataset, subsetDataset, gatherRows, type Dataset } from './dataset.js';
export {
  loadFashionMnist,
  loadFashionMnistCache,
  fashionMnistCacheDir,
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_CACHE_NAME,
  type FashionMnist,
  type FashionMnistOptions,
  type FashionMnistCacheInfo,
  type SkippedEntry,
} from './fashion-mnist.js';
export { transformImages, transformDataset, type ImageTransform, type ImageShape } from './transforms.js';
