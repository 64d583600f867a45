{{/* The CSI driver name is compiled into the plugin: not a value. */}}
{{- define "ublk-csi.driverName" -}}ublk.csi.io{{- end -}}
{{/* The Ceph RBD driver (rbd.enabled): its own name, so that its central
     provisioner never acts on the node-local driver's PVCs. */}}
{{- define "ublk-csi.rbdDriverName" -}}rbd.ublk.csi.io{{- end -}}

{{- define "ublk-csi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: fits in 52 characters so that suffixed RBAC names stay under 63. */}}
{{- define "ublk-csi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ublk-csi.instanceLabels" -}}
app.kubernetes.io/name: {{ include "ublk-csi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The node pods. */}}
{{- define "ublk-csi.selectorLabels" -}}
{{ include "ublk-csi.instanceLabels" . }}
app.kubernetes.io/component: node
{{- end -}}

{{/* The RBD controller Deployment's pods. */}}
{{- define "ublk-csi.controllerSelectorLabels" -}}
{{ include "ublk-csi.instanceLabels" . }}
app.kubernetes.io/component: rbd-controller
{{- end -}}

{{/* The RBD controller's own account (RBAC of a central provisioner,
     resizer and snapshotter, which the node pods do not need). */}}
{{- define "ublk-csi.controllerServiceAccountName" -}}
{{- printf "%s-rbd-controller" (include "ublk-csi.fullname" .) -}}
{{- end -}}

{{- define "ublk-csi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "ublk-csi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ublk-csi
{{- end -}}

{{- define "ublk-csi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ublk-csi.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag of an image value; the plugin's empty tag means appVersion. */}}
{{- define "ublk-csi.image" -}}
{{- $tag := .image.tag | default .default -}}
{{- if not $tag -}}{{- fail (printf "%s.image.tag must be set" .what) -}}{{- end -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}

{{/* The socket directory as the kubelet sees it. */}}
{{- define "ublk-csi.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) (include "ublk-csi.driverName" .) -}}
{{- end -}}

{{/* "resources:" block for a container, or nothing when the value is empty. */}}
{{- define "ublk-csi.resources" -}}
{{- if . -}}
resources:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
The RBD controller's --rbd-clusters-file lines ("clusterID monitors"):
rbd.clusters, and the chart's own StorageClass's cluster when it is not
listed there, so that a controller whose records went with its pod still
reaches that cluster. Empty when there is none.
*/}}
{{- define "ublk-csi.rbdClusters" -}}
{{- $seen := dict -}}
{{- $lines := list -}}
{{- range .Values.rbd.clusters -}}
{{- $lines = append $lines (printf "%s %s" .clusterID .monitors) -}}
{{- $_ := set $seen .clusterID true -}}
{{- end -}}
{{- $sc := .Values.rbd.storageClass -}}
{{- if and $sc.create $sc.clusterID $sc.monitors (not (hasKey $seen $sc.clusterID)) -}}
{{- $lines = append $lines (printf "%s %s" $sc.clusterID $sc.monitors) -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}
