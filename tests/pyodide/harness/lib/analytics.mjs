// A fake of the Workers Analytics Engine dataset binding (env.METRICS): it records every data
// point and refuses what the platform refuses (docs: analytics-engine/limits): at most 20
// blobs, 20 doubles and 1 index (at most 96 bytes), blobs at most 16 KB together, doubles
// numbers, blobs strings (or null), and no more than 250 points per invocation.

export class AnalyticsEngineDataset {
  constructor() {
    this.points = [];
  }

  writeDataPoint(point) {
    if (point === null || typeof point !== "object" || point instanceof Map) {
      throw new TypeError("writeDataPoint: the data point must be a plain object");
    }
    const { indexes = [], blobs = [], doubles = [] } = point;
    for (const [name, list, max] of [["indexes", indexes, 1], ["blobs", blobs, 20], ["doubles", doubles, 20]]) {
      if (!Array.isArray(list)) throw new TypeError(`writeDataPoint: ${name} must be an array`);
      if (list.length > max) throw new RangeError(`writeDataPoint: at most ${max} ${name}`);
    }
    if (!doubles.every((d) => typeof d === "number")) {
      throw new TypeError("writeDataPoint: doubles must be numbers");
    }
    if (!blobs.every((b) => b === null || typeof b === "string")) {
      throw new TypeError("writeDataPoint: blobs must be strings");
    }
    if (!indexes.every((i) => typeof i === "string" && Buffer.byteLength(i) <= 96)) {
      throw new RangeError("writeDataPoint: an index is a string of at most 96 bytes");
    }
    if (blobs.reduce((n, b) => n + Buffer.byteLength(b ?? ""), 0) > 16 * 1024) {
      throw new RangeError("writeDataPoint: blobs are at most 16 KB together");
    }
    this.points.push({ indexes: [...indexes], blobs: [...blobs], doubles: [...doubles] });
  }
}
