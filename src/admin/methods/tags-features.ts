/**
 * admin.vm.tag.* and admin.vm.feature.* (DEST a domain). Facts from
 * qubes-core-admin `qubes/api/admin.py` and `qubes/features.py`:
 * - tag.List: `TAG\n` per tag, sorted; tag.Get+TAG: `1` or `0`;
 *   tag.Set+TAG (idempotent), tag.Remove+TAG (QubesTagNotFoundError when
 *   absent): empty reply. A tag has only `[A-Za-z0-9_-]` (else
 *   QubesValueError).
 * - feature.List: `NAME\n` per feature, in the order they were first set;
 *   feature.Get+NAME: the value as is (QubesFeatureNotFoundError when
 *   absent); feature.Set+NAME (payload: the value, ASCII; empty is allowed:
 *   clients send False as ''); feature.Remove+NAME.
 * - feature.CheckWithTemplate+NAME: the domain's value, else its template's,
 *   up the chain; CheckWithNetvm: up the netvm chain; CheckWithAdminVM: the
 *   domain, then dom0; CheckWithTemplateAndAdminVM: the template chain, then
 *   dom0. Not found anywhere: QubesFeatureNotFoundError.
 */
import type { Domain } from '../../domain/domain.js';
import { QubesFeatureNotFoundError, QubesValueError } from '../../storage/errors.js';
import { printable } from '../../storage/volume.js';
import { method, type AdminCall, type MethodTable } from '../dispatch.js';
import { decodeAscii } from '../protocol/validate.js';
import { aboutDomain, destDomain, type MethodContext, type ShapeSpec } from './context.js';

const TAG_CHARS_RE = /^[A-Za-z0-9_-]*$/;
/** Longest chain followed by the CheckWith* methods (a loop guard). */
const MAX_CHAIN = 32;

export function tagFeatureMethods(ctx: MethodContext): MethodTable {
  const { app } = ctx;
  const tagCall = (call: AdminCall): { d: Domain; tag: string } => ({ d: destDomain(ctx, call), tag: call.arg });
  const local = (s: Omit<ShapeSpec, 'scope'>) => aboutDomain(ctx, { ...s, scope: 'local' });
  // Any argument, the empty one included, of the characters a tag may have.
  const onTag = (s: Pick<ShapeSpec, 'access'>) =>
    local({
      ...s,
      arg: 'any',
      argNames: 'tag',
      checkArg: (h) => {
        if (!TAG_CHARS_RE.test(h.arg)) throw new QubesValueError(`invalid tag '${printable(h.arg)}': disallowed characters`);
      },
    });
  const onFeature = (s: Omit<ShapeSpec, 'scope' | 'arg' | 'argNames'>) => local({ ...s, arg: 'required', argNames: 'feature' });
  const checkWith = (chain: (d: Domain) => Domain[]) =>
    method(onFeature({ access: 'read' }), async (call) => {
      const d = destDomain(ctx, call);
      for (const x of [d, ...chain(d)]) {
        const v = x.features.get(call.arg);
        if (v !== undefined) return v;
      }
      throw notFound(d, call.arg);
    });
  const dom0 = (): Domain[] => {
    const a = app.findDomain('dom0');
    return a ? [a] : [];
  };

  return {
    'admin.vm.tag.List': method(local({ access: 'read' }), async (call) => {
      return [...destDomain(ctx, call).tags].sort().map((t) => `${t}\n`).join('');
    }),
    'admin.vm.tag.Get': method(onTag({ access: 'read' }), async (call) => {
      const { d, tag } = tagCall(call);
      return d.tags.has(tag) ? '1' : '0';
    }),
    'admin.vm.tag.Set': method(onTag({ access: 'write' }), async (call) => {
      const { d, tag } = tagCall(call);
      await app.addTag(d, tag);
    }),
    'admin.vm.tag.Remove': method(onTag({ access: 'write' }), async (call) => {
      const { d, tag } = tagCall(call);
      await app.removeTag(d, tag);
    }),

    'admin.vm.feature.List': method(local({ access: 'read' }), async (call) => {
      return [...destDomain(ctx, call).features.keys()].map((f) => `${f}\n`).join('');
    }),
    'admin.vm.feature.Get': method(onFeature({ access: 'read' }), async (call) => {
      const d = destDomain(ctx, call);
      const v = d.features.get(call.arg);
      if (v === undefined) throw notFound(d, call.arg);
      return v;
    }),
    'admin.vm.feature.Set': method(onFeature({ access: 'write', payload: 'bounded' }), async (call) => {
      await app.setFeature(destDomain(ctx, call), call.arg, decodeAscii(call.payload, `feature ${call.arg} value`));
    }),
    'admin.vm.feature.Remove': method(onFeature({ access: 'write' }), async (call) => {
      await app.removeFeature(destDomain(ctx, call), call.arg);
    }),
    'admin.vm.feature.CheckWithTemplate': checkWith((d) => templateChain(d)),
    'admin.vm.feature.CheckWithNetvm': checkWith((d) => netvmChain(d)),
    'admin.vm.feature.CheckWithAdminVM': checkWith((d) => (d.klass === 'AdminVM' ? [] : dom0())),
    'admin.vm.feature.CheckWithTemplateAndAdminVM': checkWith((d) => [
      ...templateChain(d),
      ...(d.klass === 'AdminVM' ? [] : dom0()),
    ]),
  };
}

function notFound(d: Domain, feature: string): QubesFeatureNotFoundError {
  return new QubesFeatureNotFoundError(`domain ${d.name} has no feature '${printable(feature)}'`);
}

/** Templates up the chain, nearest first (stops at a loop). */
function templateChain(d: Domain): Domain[] {
  return follow(d, (x) => x.template);
}

/** netvm, its netvm, ... (stops at a loop). */
function netvmChain(d: Domain): Domain[] {
  return follow(d, (x) => {
    if (!x.hasProperty('netvm')) return null;
    const n = x.prop('netvm');
    return n === null ? null : (x.host.findDomain(String(n)) ?? null);
  });
}

function follow(d: Domain, next: (x: Domain) => Domain | null): Domain[] {
  const out: Domain[] = [];
  for (let x = next(d); x && x !== d && !out.includes(x) && out.length < MAX_CHAIN; x = next(x)) out.push(x);
  return out;
}
