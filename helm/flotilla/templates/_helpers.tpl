{{/* Chart name, truncated to a DNS label. */}}
{{- define "flotilla.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release already has it. */}}
{{- define "flotilla.fullname" -}}
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

{{- define "flotilla.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "flotilla.labels" -}}
helm.sh/chart: {{ include "flotilla.chart" . }}
{{ include "flotilla.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flotilla
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "flotilla.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Component labels: pass (dict "ctx" $ "component" "coordinator"). */}}
{{- define "flotilla.componentLabels" -}}
{{ include "flotilla.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "flotilla.componentSelectorLabels" -}}
{{ include "flotilla.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "flotilla.coordinatorName" -}}
{{- printf "%s-coordinator" (include "flotilla.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Agent object name: pass (dict "ctx" $ "agent" $agent). */}}
{{- define "flotilla.agentName" -}}
{{- printf "%s-agent-%s" (include "flotilla.fullname" .ctx) .agent.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flotilla.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flotilla.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flotilla.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The coordinator's gRPC URL, as the agents, the Job and init containers reach it. */}}
{{- define "flotilla.coordinatorAddress" -}}
{{- if .Values.coordinator.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "flotilla.coordinatorName" .) .Release.Namespace (int .Values.coordinator.port) }}
{{- else }}
{{- required "coordinator.externalAddress is required when coordinator.enabled=false" .Values.coordinator.externalAddress }}
{{- end }}
{{- end }}

{{/* etcd endpoints as one comma-separated string (values may give a list or a string). */}}
{{- define "flotilla.etcdEndpoints" -}}
{{- $e := .Values.coordinator.etcd.endpoints }}
{{- if kindIs "slice" $e }}{{ join "," $e }}{{ else }}{{ $e | default "" }}{{ end }}
{{- end }}

{{/* The name of the migrations ConfigMap, or "" when the migrations come with the image. */}}
{{- define "flotilla.migrationsConfigMap" -}}
{{- if .Values.migrations.configMap }}
{{- .Values.migrations.configMap }}
{{- else if .Values.migrations.files }}
{{- printf "%s-migrations" (include "flotilla.fullname" .) }}
{{- end }}
{{- end }}

{{/* The directory the coordinator reads migrations from. */}}
{{- define "flotilla.migrationsDir" -}}
{{- if include "flotilla.migrationsConfigMap" . }}
{{- .Values.migrations.mountPath }}
{{- else }}
{{- .Values.migrations.imagePath }}
{{- end }}
{{- end }}

{{/*
The heads of the graph in migrations.files (sorted, comma-separated): revisions no other
revision revises. Reads only the `-- revision:` / `-- revises:` header lines (the first of
each in a file), which is what the file format defines. "" without migrations.files.
*/}}
{{- define "flotilla.migrationHeads" -}}
{{- $revisions := list }}
{{- $parents := list }}
{{- range $file, $text := .Values.migrations.files }}
{{- $rev := regexFind "(?m)^--[ \t]*revision:[ \t]*[A-Za-z0-9_.-]+" $text | regexFind "[A-Za-z0-9_.-]+$" }}
{{- if $rev }}{{ $revisions = append $revisions $rev }}{{ end }}
{{- $line := regexFind "(?m)^--[ \t]*revises:.*$" $text }}
{{- if $line }}
{{- range (regexReplaceAll "^--[ \t]*revises:" $line "" | splitList ",") }}
{{- if trim . }}{{ $parents = append $parents (trim .) }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- $heads := list }}
{{- range $revisions }}{{ if not (has . $parents) }}{{ $heads = append $heads . }}{{ end }}{{ end }}
{{- $heads | sortAlpha | join "," }}
{{- end }}

{{/* The rollout goal: rolloutJob.to, or the single head of migrations.files for "head". */}}
{{- define "flotilla.rolloutGoal" -}}
{{- $heads := include "flotilla.migrationHeads" . }}
{{- if and (eq .Values.rolloutJob.to "head") $heads (not (contains "," $heads)) }}
{{- $heads }}
{{- else }}
{{- .Values.rolloutJob.to }}
{{- end }}
{{- end }}

{{/* When the rollout Job runs: rolloutJob.hook, "auto" resolved (see values.yaml). */}}
{{- define "flotilla.rolloutHook" -}}
{{- if ne .Values.rolloutJob.hook "auto" }}
{{- .Values.rolloutJob.hook }}
{{- else if .Values.coordinator.enabled }}
{{- "post-install,post-upgrade" }}
{{- else }}
{{- "pre-install,pre-upgrade" }}
{{- end }}
{{- end }}

{{/* "true" when the rollout Job is a pre-* hook (it runs before the release's resources). */}}
{{- define "flotilla.rolloutBeforeRelease" -}}
{{- if and .Values.rolloutJob.enabled (contains "pre-" (include "flotilla.rolloutHook" .)) }}true{{ end }}
{{- end }}

{{/* OTEL_* environment: pass (dict "ctx" $ "component" "coordinator"). */}}
{{- define "flotilla.otelEnv" -}}
{{- $o := .ctx.Values.otel }}
{{- if $o.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $o.endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "%s-%s" $o.serviceNamePrefix .component | quote }}
{{- $attrs := list (printf "service.namespace=%s" .ctx.Release.Namespace) }}
{{- range $k, $v := $o.resourceAttributes }}{{ $attrs = append $attrs (printf "%s=%v" $k $v) }}{{ end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- with $o.sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with $o.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- with $o.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Prometheus scrape annotations, when metrics are on. */}}
{{- define "flotilla.metricsAnnotations" -}}
{{- if and .Values.metrics.enabled .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* Checks that fail the render with a message instead of deploying something broken. */}}
{{- define "flotilla.validate" -}}
{{- if and .Values.coordinator.enabled (not (include "flotilla.etcdEndpoints" .)) (gt (int .Values.coordinator.replicas) 1) }}
{{- fail "coordinator.replicas > 1 needs etcd (coordinator.etcd.endpoints): the embedded mode's file lock and SQLite state allow exactly one coordinator" }}
{{- end }}
{{- if and .Values.migrations.configMap .Values.migrations.files }}
{{- fail "set migrations.configMap or migrations.files, not both" }}
{{- end }}
{{- if and .Values.rolloutJob.enabled .Values.coordinator.enabled (contains "pre-install" (include "flotilla.rolloutHook" .)) }}
{{- fail "rolloutJob.hook pre-install needs a long-lived coordinator outside this release (this release's coordinator does not exist before install): set coordinator.enabled=false and coordinator.externalAddress, or use hook auto / post-install,post-upgrade" }}
{{- end }}
{{- $seen := dict }}
{{- range .Values.agents }}
{{- if not .name }}{{ fail "every entry of agents needs a name" }}{{ end }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .name) }}{{ fail (printf "agents: name %q is not a DNS label" .name) }}{{ end }}
{{- if hasKey $seen .name }}{{ fail (printf "agents: name %q appears twice" .name) }}{{ end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- end }}
