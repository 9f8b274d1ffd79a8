{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "rstar-math.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every object: the release name, plus the chart name unless the release
name already contains it (so `helm install rstar-math` gives rstar-math-*, not rstar-math-rstar-math-*).
*/}}
{{- define "rstar-math.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "rstar-math.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. part-of matches the label the pipeline puts on its task pods. */}}
{{- define "rstar-math.labels" -}}
helm.sh/chart: {{ include "rstar-math.chart" . }}
{{ include "rstar-math.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rstar-math
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that identify this release's objects. */}}
{{- define "rstar-math.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rstar-math.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The upload job's ServiceAccount. */}}
{{- define "rstar-math.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-upload" (include "rstar-math.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: (dict "root" $ "image" .Values.images.cpu). */}}
{{- define "rstar-math.image" -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.images.registry) .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The S3 endpoint URL, scheme included; AWS's regional endpoint when none is given. */}}
{{- define "rstar-math.s3Endpoint" -}}
{{- default (printf "https://s3.%s.amazonaws.com" .Values.s3.region) .Values.s3.endpoint | trimSuffix "/" }}
{{- end }}

{{/* Names of the ConfigMaps the chart creates. */}}
{{- define "rstar-math.s3ConfigMap" -}}
{{- printf "%s-s3" (include "rstar-math.fullname" .) }}
{{- end }}
{{- define "rstar-math.nightlyConfigMap" -}}
{{- printf "%s-nightly" (include "rstar-math.fullname" .) }}
{{- end }}

{{/* Whether the NetworkPolicy has a peer for the object store. */}}
{{- define "rstar-math.objectStoreReachable" -}}
{{- with .Values.networkPolicy.objectStore }}
{{- if or .cidrs .namespaceSelector .podSelector }}true{{ end }}
{{- end }}
{{- end }}

{{/*
Restricted Pod Security profile for a container: non-root, no privilege escalation, no
capabilities, read-only root filesystem (writable paths are emptyDirs), RuntimeDefault seccomp.
*/}}
{{- define "rstar-math.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Restricted Pod Security profile for a pod. */}}
{{- define "rstar-math.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The recurring run's pipeline parameters (the inputs of the rstar-nightly-re-evolution
pipeline), as a JSON object; the nightly ConfigMap holds them and the job passes each one.
*/}}
{{- define "rstar-math.pipelineParameters" -}}
{{- $root := . }}
{{- $params := dict
    "preset" .Values.run.preset
    "config_overrides" .Values.run.configOverrides
    "base_model" .Values.run.baseModel
    "eval_problems" .Values.run.evalProblems
    "storage_root" (default (printf "s3://%s/runs" .Values.s3.bucket) .Values.run.storageRoot)
    "rounds" (int .Values.run.rounds)
    "shards" (int .Values.run.shards)
    "cpu_image" (include "rstar-math.image" (dict "root" $root "image" .Values.images.cpu))
    "gpu_image" (include "rstar-math.image" (dict "root" $root "image" .Values.images.gpuRollout))
    "train_image" (include "rstar-math.image" (dict "root" $root "image" .Values.images.train))
    "accelerator_type" .Values.accelerators.type
    "rollout_gpus" (int .Values.accelerators.rollout)
    "train_gpus" (int .Values.accelerators.train)
    "gpu_node_selector" .Values.placement.gpu.nodeSelector
    "gpu_tolerations" .Values.placement.gpu.tolerations
    "cpu_node_selector" .Values.placement.cpu.nodeSelector
    "cpu_tolerations" .Values.placement.cpu.tolerations
    "s3_secret" .Values.s3.existingSecret
    "s3_config_map" (include "rstar-math.s3ConfigMap" .)
    "problem_prefix" (default (printf "s3://%s/incoming/" .Values.s3.bucket) .Values.schedule.problemPrefix)
    "registry" (default (printf "s3://%s/registry/promoted.json" .Values.s3.bucket) .Values.schedule.registry)
    "promotion_gate" (float64 .Values.schedule.promotionGate)
}}
{{- toJson $params }}
{{- end }}
