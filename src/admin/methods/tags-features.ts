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
import { destDomain, requireArg, requireNoArg, requireNoPayload, type MethodContext } from './context.js';

const TAG_CHARS_RE = /^[A-Za-z0-9_-]*$/;
/** Longest chain followed by the CheckWith* methods (a loop guard). */
const MAX_CHAIN = 32;

export function tagFeatureMethods(ctx: MethodContext): MethodTable {
  const { app } = ctx;
  const tagCall = (call: AdminCall): { d: Domain; tag: string } => {
    const d = destDomain(ctx, call);
    if (!TAG_CHARS_RE.test(call.arg)) throw new QubesValueError(`invalid tag '${printable(call.arg)}': disallowed characters`);
    requireNoPayload(call);
    return { d, tag: call.arg };
  };
  const featureCall = (call: AdminCall): { d: Domain; feature: string } => {
    const d = destDomain(ctx, call);
    return { d, feature: requireArg(call) };
  };
  const checkWith = (chain: (d: Domain) => Domain[]) =>
    method(async (call) => {
      const { d, feature } = featureCall(call);
      requireNoPayload(call);
      for (const x of [d, ...chain(d)]) {
        const v = x.features.get(feature);
        if (v !== undefined) return v;
      }
      throw notFound(d, feature);
    });
  const dom0 = (): Domain[] => {
    const a = app.findDomain('dom0');
    return a ? [a] : [];
  };

  return {
    'admin.vm.tag.List': method(async (call) => {
      const d = destDomain(ctx, call);
      requireNoArg(call);
      requireNoPayload(call);
      return [...d.tags].sort().map((t) => `${t}\n`).join('');
    }),
    'admin.vm.tag.Get': method(async (call) => {
      const { d, tag } = tagCall(call);
      return d.tags.has(tag) ? '1' : '0';
    }),
    'admin.vm.tag.Set': method(async (call) => {
      const { d, tag } = tagCall(call);
      await app.addTag(d, tag);
    }),
    'admin.vm.tag.Remove': method(async (call) => {
      const { d, tag } = tagCall(call);
      await app.removeTag(d, tag);
    }),

    'admin.vm.feature.List': method(async (call) => {
      const d = destDomain(ctx, call);
      requireNoArg(call);
      requireNoPayload(call);
      return [...d.features.keys()].map((f) => `${f}\n`).join('');
    }),
    'admin.vm.feature.Get': method(async (call) => {
      const { d, feature } = featureCall(call);
      requireNoPayload(call);
      const v = d.features.get(feature);
      if (v === undefined) throw notFound(d, feature);
      return v;
    }),
    'admin.vm.feature.Set': method(async (call) => {
      const { d, feature } = featureCall(call);
      await app.setFeature(d, feature, decodeAscii(call.payload, `feature ${feature} value`));
    }),
    'admin.vm.feature.Remove': method(async (call) => {
      const { d, feature } = featureCall(call);
      requireNoPayload(call);
      await app.removeFeature(d, feature);
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
