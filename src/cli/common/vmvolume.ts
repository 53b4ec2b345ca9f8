/** `VM:VOLUME` arguments. */
import { UsageError } from './args.js';

export interface VmVolume {
  readonly vm: string;
  readonly volume: string;
}

export function parseVmVolume(text: string): VmVolume {
  const i = text.indexOf(':');
  if (i <= 0 || i === text.length - 1) throw new UsageError(`expected VM:VOLUME (like work:private), got '${text}'`);
  return { vm: text.slice(0, i), volume: text.slice(i + 1) };
}

export function showVmVolume(v: VmVolume): string {
  return `${v.vm}:${v.volume}`;
}
