// Validates rendered Kubernetes manifests (multi-document YAML files, e.g.
// `helm template` output) against the Kubernetes API schemas bundled in the
// npm package kubernetes-models, CRD kinds against their own schemas, and
// checks cross-references the schemas cannot see (volume mounts, named probe
// ports, selectors, RBAC bindings). Any kind without a schema is an error,
// never a silent skip.
//
//   node validate-manifests.mjs FILE...
// Exit 0: every object valid. Exit 1: each problem printed as
//   FILE: Kind/name: path: message
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import Ajv from "ajv";

const here = dirname(fileURLToPath(import.meta.url));
const ajv = new Ajv({ allErrors: true, strict: false });

// apiVersion/kind -> [module, export] for kinds outside kubernetes-models.
const CRD_MODELS = {
  "monitoring.coreos.com/v1/ServiceMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
};
const CRD_SCHEMAS = {
  "snapshot.storage.k8s.io/v1/VolumeSnapshotClass": "snapshot.storage.k8s.io_v1_VolumeSnapshotClass.json",
};
const NAMESPACED = new Set(["ServiceAccount", "Role", "RoleBinding", "DaemonSet", "Deployment",
  "StatefulSet", "Service", "ServiceMonitor", "ConfigMap", "Secret", "Pod"]);

const problems = [];
let count = 0;

function report(file, obj, path, msg) {
  const id = obj && obj.kind ? `${obj.kind}/${obj.metadata?.name ?? "?"}` : "document";
  problems.push(`${file}: ${id}: ${path || "/"}: ${msg}`);
}

async function loadValidator(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (CRD_SCHEMAS[key]) {
    const schema = JSON.parse(readFileSync(join(here, "schemas", CRD_SCHEMAS[key]), "utf8"));
    const v = ajv.compile(schema);
    return (obj) => (v(obj) ? [] : v.errors.map((e) => [e.instancePath, `${e.message}${e.params?.additionalProperty ? ` (${e.params.additionalProperty})` : ""}`]));
  }
  const mod = CRD_MODELS[key] ??
    (apiVersion.includes("/") ? `kubernetes-models/${apiVersion}/${kind}` : `kubernetes-models/v1/${kind}`);
  let Model;
  try {
    Model = (await import(mod))[kind];
  } catch {
    return null;
  }
  if (!Model) return null;
  return (obj) => {
    try {
      new Model(obj).validate();
      return [];
    } catch (e) {
      // ValidationError: message lists "data/path must ..." lines.
      return String(e.message).split("\n").filter(Boolean).map((l) => {
        const m = /^data(\S*) (.*)$/.exec(l);
        return m ? [m[1], m[2]] : ["", l];
      });
    }
  };
}

const DNS1123 = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

function checkPodSpec(file, obj, spec, path) {
  const volumes = new Set((spec.volumes ?? []).map((v) => v.name));
  const containers = [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
  const names = new Set();
  for (const [i, c] of containers.entries()) {
    const cp = `${path}/containers[${c.name}]`;
    if (names.has(c.name)) report(file, obj, cp, "duplicate container name");
    names.add(c.name);
    if (!c.image || /:$/.test(c.image)) report(file, obj, `${cp}/image`, `image '${c.image}' has no tag`);
    for (const m of c.volumeMounts ?? []) {
      if (!volumes.has(m.name)) report(file, obj, `${cp}/volumeMounts`, `mounts volume '${m.name}' that the pod does not declare`);
      if (m.mountPropagation === "Bidirectional" && !c.securityContext?.privileged) {
        report(file, obj, `${cp}/volumeMounts`, `Bidirectional propagation of '${m.name}' needs a privileged container`);
      }
    }
    const ports = new Set((c.ports ?? []).map((p) => p.name).filter(Boolean));
    for (const probe of ["livenessProbe", "readinessProbe", "startupProbe"]) {
      const port = c[probe]?.httpGet?.port;
      if (typeof port === "string" && !ports.has(port)) {
        report(file, obj, `${cp}/${probe}`, `named port '${port}' is not a port of this container`);
      }
    }
    const argsText = (c.args ?? []).join(" ");
    for (const ref of argsText.matchAll(/\$\(([A-Z_][A-Z0-9_]*)\)/g)) {
      if (!(c.env ?? []).some((e) => e.name === ref[1])) {
        report(file, obj, `${cp}/args`, `refers to $(${ref[1]}) but the container has no such env var`);
      }
    }
  }
  const used = new Set(containers.flatMap((c) => (c.volumeMounts ?? []).map((m) => m.name)));
  for (const v of volumes) if (!used.has(v)) report(file, obj, `${path}/volumes`, `volume '${v}' is mounted by no container`);
}

function matches(selector, labels) {
  return Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v);
}

function crossChecks(file, objs) {
  const byKind = (k) => objs.filter((o) => o.kind === k);
  const seen = new Set();
  for (const o of objs) {
    const id = `${o.apiVersion}/${o.kind}/${o.metadata?.namespace ?? ""}/${o.metadata?.name}`;
    if (seen.has(id)) report(file, o, "/metadata/name", "duplicate object");
    seen.add(id);
    const name = o.metadata?.name;
    if (!name || name.length > 253 || !DNS1123.test(name)) report(file, o, "/metadata/name", `'${name}' is not a DNS-1123 name`);
    if (NAMESPACED.has(o.kind) && !o.metadata?.namespace) report(file, o, "/metadata/namespace", "namespaced object without a namespace");
    for (const [k, v] of Object.entries(o.metadata?.labels ?? {})) {
      if (typeof v !== "string" || v.length > 63) report(file, o, `/metadata/labels/${k}`, "label value longer than 63 characters or not a string");
    }
  }
  for (const ds of [...byKind("DaemonSet"), ...byKind("Deployment"), ...byKind("StatefulSet")]) {
    const tl = ds.spec?.template?.metadata?.labels;
    if (!matches(ds.spec?.selector?.matchLabels, tl)) report(file, ds, "/spec/selector", "selector does not match the pod template's labels");
    checkPodSpec(file, ds, ds.spec?.template?.spec ?? {}, "/spec/template/spec");
    const sa = ds.spec?.template?.spec?.serviceAccountName;
    const sas = byKind("ServiceAccount").map((s) => s.metadata.name);
    if (sa && sas.length && !sas.includes(sa)) report(file, ds, "/spec/template/spec/serviceAccountName", `'${sa}' is not rendered`);
  }
  const workloads = [...byKind("DaemonSet"), ...byKind("Deployment"), ...byKind("StatefulSet")];
  for (const svc of byKind("Service")) {
    const sel = svc.spec?.selector;
    const target = workloads.find((w) => matches(sel, w.spec?.template?.metadata?.labels));
    if (!target) { report(file, svc, "/spec/selector", "selects no rendered workload"); continue; }
    const cports = new Set(target.spec.template.spec.containers.flatMap((c) => (c.ports ?? []).map((p) => p.name)));
    for (const p of svc.spec?.ports ?? []) {
      if (typeof p.targetPort === "string" && !cports.has(p.targetPort)) report(file, svc, "/spec/ports", `targetPort '${p.targetPort}' is no container port of ${target.kind}/${target.metadata.name}`);
    }
  }
  for (const sm of byKind("ServiceMonitor")) {
    const svc = byKind("Service").find((s) => matches(sm.spec?.selector?.matchLabels, s.metadata?.labels));
    if (!svc) { report(file, sm, "/spec/selector", "selects no rendered Service"); continue; }
    const names = new Set((svc.spec.ports ?? []).map((p) => p.name));
    for (const e of sm.spec?.endpoints ?? []) if (e.port && !names.has(e.port)) report(file, sm, "/spec/endpoints", `port '${e.port}' is not a port of Service/${svc.metadata.name}`);
  }
  for (const b of [...byKind("RoleBinding"), ...byKind("ClusterRoleBinding")]) {
    const roleKind = b.roleRef?.kind;
    if (!objs.some((o) => o.kind === roleKind && o.metadata.name === b.roleRef?.name)) {
      report(file, b, "/roleRef", `${roleKind}/${b.roleRef?.name} is not rendered`);
    }
  }
}

for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  const objs = [];
  for (const doc of docs) {
    if (doc.errors.length) { report(file, null, "", `YAML: ${doc.errors[0].message}`); continue; }
    const obj = doc.toJS();
    if (obj == null) continue;
    if (typeof obj !== "object" || !obj.apiVersion || !obj.kind) { report(file, obj, "", "not a Kubernetes object (apiVersion/kind missing)"); continue; }
    const validate = await loadValidator(obj.apiVersion, obj.kind);
    if (!validate) { report(file, obj, "", `no schema for ${obj.apiVersion} ${obj.kind}: add one to scripts/packaging/validate-manifests.mjs`); continue; }
    for (const [p, msg] of validate(obj)) report(file, obj, p, msg);
    objs.push(obj);
    count++;
  }
  crossChecks(file, objs);
  const kinds = [...new Set(objs.map((o) => o.kind))].sort().join(", ");
  console.log(`validate: ${file}: ${objs.length} objects (${kinds})`);
}

if (problems.length) {
  for (const p of problems) console.error(`validate: ${p}`);
  console.error(`validate: ${problems.length} problem(s) in ${count} objects`);
  process.exit(1);
}
