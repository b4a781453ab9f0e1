/** The demo experiment (`eigenlorax demo`) as a library function. */
export {
  runDemo,
  demoBaseModel,
  evaluateTargets,
  DEFAULT_DEMO_OUT,
  DEMO_CACHE_VERSION,
  type DemoOptions,
  type DemoResults,
  type MethodId,
  type MethodResult,
  type HeldOutResult,
  type ZooTaskResult,
  type ZeroShotResult,
  type TargetResult,
  type CurvePoint,
} from './run.js';
export { FULL_SETTINGS, QUICK_SETTINGS, type DemoSettings, type DemoTask, type HeldOutTask, type MethodBudget } from './settings.js';
export { formatDemoText, formatDemoMarkdown, writeDemoFiles } from './report.js';
export { lineChartSvg, type LineChartOptions, type LineSeries } from '../chart/svg.js';
