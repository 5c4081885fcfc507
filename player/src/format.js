// Number formatting shared by the page and the chart.

const UNITS = ["B", "kB", "MB", "GB"];

/** 1234567 -> "1.23 MB" (decimal units, like network tools). */
export function formatBytes(bytes) {
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${UNITS[unit]}`;
}
