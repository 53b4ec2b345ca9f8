/** The domain model and its persistent state (qubes.xml). */
export { QubesApp, MAX_QID } from './app.js';
export type { QubesAppOptions, CreateDomainOptions, CloneDomainOptions, PoolChoice, PropertyTarget } from './app.js';
export {
  Domain,
  AdminVM,
  TemplateVM,
  AppVM,
  StandaloneVM,
  DispVM,
  GlobalProperties,
  DOMAIN_CLASSES,
  ADMINVM_UUID,
  checkDomainName,
  isDomainClass,
  makeDomain,
} from './domain.js';
export type { DomainClass, PowerState, DomainHost, DomainInit } from './domain.js';
export { domainNameProblem, isTagName } from './names.js';
export { AppEvents } from './events.js';
export type { AppEvent, AppEventHandler } from './events.js';
export { DEFAULT_LABELS, Labels, labelId } from './labels.js';
export type { Label } from './labels.js';
export { PropertyHolder, propertyText } from './properties.js';
export type { PropType, PropValue, PropertyDef, PropertyReading } from './properties.js';
export { driversPoolFactory } from './pool-factory.js';
export type { PoolFactory } from './pool-factory.js';
export { noopRunner } from './runner.js';
export type { DomainRunner, RunnerDomain } from './runner.js';
export { MAX_STATE_BYTES, StateDocument, StateFileError, readStateText } from './state-file.js';
export { StateLock, StateLockedError } from './state-lock.js';
export { UnavailablePool, UnavailableVolume } from './unavailable.js';
