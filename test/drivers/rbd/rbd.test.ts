// The rbd driver on a real single-node Ceph cluster (scripts/with-ceph.sh).
// One test file, so the suites run one after the other: the cluster-failure
// suite (last) kills the OSD, which no other rbd suite may see. The driver
// conformance suite for rbd runs here too, for that reason.
import '../../conformance/rbd.js';
import './layout.js';
import './hosts.js';
import './base-reuse.js';
import './prune-import.js';
import './daemons.js';
import './start-stop.js';
import './import-service.js';
import './export-stream.js';
import './callback.js';
import './failure.js';
