/**
 * The rules for domain names and tags, in one place: the admin API checks
 * names with them before anything else (protocol/validate.ts,
 * admin/methods), and the domain model (new domains, qubes.xml, tags) with
 * the same rules.
 */

const DOMAIN_NAME_RE = /^[A-Za-z][A-Za-z0-9_.-]*$/;
const RESERVED_DOMAIN_NAMES: ReadonlySet<string> = new Set(['Domain-0', 'none', 'default']);

/** Why `name` is not a valid domain name (at most 31 characters, a letter then `[A-Za-z0-9_.-]`, not reserved, not `-dm`), or undefined when it is. */
export function domainNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'it is empty';
  if (name.length > 31) return 'it is longer than 31 characters';
  if (!/^[A-Za-z]/.test(name)) return 'it must start with a letter';
  if (!DOMAIN_NAME_RE.test(name)) return 'it may contain only letters, digits, _, . and -';
  if (RESERVED_DOMAIN_NAMES.has(name)) return 'it is reserved';
  if (name.endsWith('-dm')) return 'it must not end in -dm';
  return undefined;
}

const TAG_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** Tags: 1 to 64 letters, digits, `_` and `-`. */
export function isTagName(tag: string): boolean {
  return TAG_RE.test(tag);
}

/** A class name with its article: "an AppVM", "an AdminVM", "a TemplateVM" (by the sound of its first letter). */
export function withArticle(klass: string): string {
  return `${/^[AEIOU]/.test(klass) ? 'an' : 'a'} ${klass}`;
}
