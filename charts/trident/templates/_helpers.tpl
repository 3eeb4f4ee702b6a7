{{/*
Names and labels (the usual Helm chart conventions).
*/}}
{{- define "trident.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "trident.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "trident.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trident.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "trident.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "trident.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "trident.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "trident.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The Secret holding the API key file: created from apiKeys.keys, else apiKeys.existingSecret.
*/}}
{{- define "trident.apiKeySecret" -}}
{{- if .Values.apiKeys.keys -}}
{{- printf "%s-api-keys" (include "trident.fullname" .) -}}
{{- else -}}
{{- required "apiKeys: set apiKeys.existingSecret (a Secret with the key file) or list apiKeys.keys; trident refuses to serve without a key" .Values.apiKeys.existingSecret -}}
{{- end -}}
{{- end -}}

{{/*
GPUs of the whole pod: the sum of models[].gpus.
*/}}
{{- define "trident.gpuCount" -}}
{{- $n := 0 -}}
{{- range .Values.models -}}
{{- $n = add $n (int64 (default 0 .gpus)) -}}
{{- end -}}
{{- $n -}}
{{- end -}}

{{- define "trident.image" -}}
{{- $tag := .Values.image.tag | default (ternary "latest-cuda" "latest" (gt (int64 (include "trident.gpuCount" .)) 0)) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/*
Where a model's weights are: its volume's mount point plus `path`, or `path` in the image.
*/}}
{{- define "trident.modelPath" -}}
{{- if .storage -}}
{{- printf "/app/models/%s" .name -}}{{- if .path -}}/{{ trimPrefix "/" .path }}{{- end -}}
{{- else -}}
{{- .path -}}
{{- end -}}
{{- end -}}

{{/*
trident's config/models.json from .Values.models, in the schema src/config/models.rs reads
(deny_unknown_fields: only its key names are written). Every structural problem fails the
rendering with the model's index and key; trident's own check-config does the rest.
*/}}
{{- define "trident.modelsJson" -}}
{{- $known := list "name" "type" "displayName" "aliases" "path" "storage" "gpus" "replicas" "port" "device" "dtype" "maxModelLen" "gpuMemoryUtilization" "tensorParallelSize" "maxBatchTokens" "maxNumSeqs" "maxConcurrentRequests" "maxQueue" "threads" "kvCacheMemoryMb" "upstream" -}}
{{- $ints := dict "maxModelLen" "max_model_len" "tensorParallelSize" "tensor_parallel_size" "maxBatchTokens" "max_batch_tokens" "maxNumSeqs" "max_num_seqs" "maxConcurrentRequests" "max_concurrent_requests" "maxQueue" "max_queue" "threads" "threads" "kvCacheMemoryMb" "kv_cache_memory_mb" -}}
{{- $models := dict -}}
{{- $nextPort := 8001 -}}
{{- $nextGpu := 0 -}}
{{- if not .Values.models -}}
{{- fail "models: list at least one model (name, type, path)" -}}
{{- end -}}
{{- range $i, $m := .Values.models -}}
{{- if not (kindIs "map" $m) -}}
{{- fail (printf "models[%d]: expected a mapping with name, type and path" $i) -}}
{{- end -}}
{{- range $k, $_ := $m -}}
{{- if not (has $k $known) -}}
{{- fail (printf "models[%d].%s: unknown key (known: %s)" $i $k (join ", " $known)) -}}
{{- end -}}
{{- end -}}
{{- $id := required (printf "models[%d].name is required (the model id clients send)" $i) $m.name | toString -}}
{{- if not (regexMatch "^[^\\s]+$" $id) -}}
{{- fail (printf "models[%d].name %q: must be non-empty without whitespace" $i $id) -}}
{{- end -}}
{{- if hasKey $models $id -}}
{{- fail (printf "models[%d].name %q: used by an earlier model" $i $id) -}}
{{- end -}}
{{- $type := required (printf "models[%d].type is required (chat, embedding or rerank)" $i) $m.type -}}
{{- if not (has $type (list "chat" "embedding" "rerank")) -}}
{{- fail (printf "models[%d].type %q: must be chat, embedding or rerank" $i $type) -}}
{{- end -}}
{{- $e := dict "type" $type -}}
{{- if $m.displayName -}}{{- $_ := set $e "name" ($m.displayName | toString) -}}{{- end -}}
{{- if $m.aliases -}}{{- $_ := set $e "aliases" $m.aliases -}}{{- end -}}
{{- if $m.dtype -}}{{- $_ := set $e "dtype" $m.dtype -}}{{- end -}}
{{- range $key, $jsonKey := $ints -}}
{{- if hasKey $m $key -}}
{{- $v := index $m $key -}}
{{- if not (or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v)) -}}
{{- fail (printf "models[%d].%s: must be a number" $i $key) -}}
{{- end -}}
{{- $_ := set $e $jsonKey (int64 $v) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $m "gpuMemoryUtilization" -}}
{{- $_ := set $e "gpu_memory_utilization" (float64 $m.gpuMemoryUtilization) -}}
{{- end -}}
{{- $gpus := int64 (default 0 $m.gpus) -}}
{{- if $m.upstream -}}
{{- if or $m.storage $m.path (gt $gpus 0) -}}
{{- fail (printf "models[%d] (%s): an upstream model takes no path, storage or gpus" $i $id) -}}
{{- end -}}
{{- $_ := set $e "upstream" $m.upstream -}}
{{- else -}}
{{- if and (not $m.path) (not $m.storage) -}}
{{- fail (printf "models[%d].path is required (a path in the image), or set models[%d].storage (a PVC with the weights)" $i $i) -}}
{{- end -}}
{{- if $m.storage -}}
{{- if and (not $m.storage.existingClaim) (not $m.storage.size) -}}
{{- fail (printf "models[%d].storage: set existingClaim (a PVC holding the weights) or size (the chart creates one)" $i) -}}
{{- end -}}
{{- if and $m.storage.size (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $id)) -}}
{{- fail (printf "models[%d].name %q: a claim the chart creates is named after the model, so the name must be a DNS label (lowercase letters, digits, '-')" $i $id) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $e "path" (include "trident.modelPath" $m) -}}
{{- $replicas := int64 (default 1 $m.replicas) -}}
{{- if lt $replicas 1 -}}
{{- fail (printf "models[%d].replicas: must be at least 1" $i) -}}
{{- end -}}
{{- if hasKey $m "replicas" -}}{{- $_ := set $e "replicas" $replicas -}}{{- end -}}
{{- $port := int64 (default $nextPort $m.port) -}}
{{- $_ := set $e "port" $port -}}
{{- $nextPort = max $nextPort (add $port $replicas) -}}
{{- if gt $gpus 0 -}}
{{- if eq (toString $m.device) "cpu" -}}
{{- fail (printf "models[%d] (%s): gpus is %d but device is \"cpu\"" $i $id $gpus) -}}
{{- end -}}
{{- $tp := int64 (default 1 $m.tensorParallelSize) -}}
{{- if and (gt $tp 1) (ne $tp $gpus) -}}
{{- fail (printf "models[%d] (%s): tensorParallelSize is %d but gpus is %d: one rank runs on each GPU" $i $id $tp $gpus) -}}
{{- end -}}
{{- $ids := list -}}
{{- range until (int $gpus) -}}
{{- $ids = append $ids (add $nextGpu .) -}}
{{- end -}}
{{- $nextGpu = add $nextGpu $gpus -}}
{{- $_ := set $e "gpus" $ids -}}
{{- $_ := set $e "device" "cuda" -}}
{{- end -}}
{{- end -}}
{{- if and $m.device (not (hasKey $e "device")) -}}
{{- if not (has $m.device (list "auto" "cpu" "cuda")) -}}
{{- fail (printf "models[%d].device %q: must be auto, cpu or cuda" $i $m.device) -}}
{{- end -}}
{{- $_ := set $e "device" $m.device -}}
{{- end -}}
{{- $_ := set $models $id $e -}}
{{- end -}}
{{- dict "models" $models | toPrettyJson -}}
{{- end -}}

{{/*
The settings as TRIDENT_<KEY> variables; the chart's own keys cannot be overridden.
*/}}
{{- define "trident.settingsEnv" -}}
{{- $owned := list "host" "port" "api_keys" "api_key_file" "generate_api_key" "allow_unauthenticated" "metrics_port" -}}
{{- $known := list "metrics_public" "cors_origins" "log_format" "balance" "request_timeout_secs" "first_byte_timeout_secs" "stream_idle_timeout_secs" "liveness_interval_secs" "liveness_timeout_secs" "liveness_failures" "model_stall_secs" "header_read_timeout_secs" "body_read_timeout_secs" "max_body_bytes" "startup_timeout_secs" "drain_timeout_secs" "gateway_threads" -}}
{{- range $k, $v := .Values.settings -}}
{{- if has $k $owned }}
{{- fail (printf "settings.%s: set by the chart (see apiKeys, service, metrics)" $k) -}}
{{- end -}}
{{- if not (has $k $known) }}
{{- fail (printf "settings.%s: not a trident setting (known: %s)" $k (join ", " $known)) -}}
{{- end }}
- name: TRIDENT_{{ upper $k }}
  {{- if kindIs "slice" $v }}
  value: {{ join "," $v | quote }}
  {{- else if and (kindIs "float64" $v) (eq $v (float64 (int64 $v))) }}
  value: {{ int64 $v | quote }}
  {{- else }}
  value: {{ $v | toString | quote }}
  {{- end }}
{{- end -}}
{{- end -}}

{{/*
The models' own ports (each entry's `port` in models.json), space-separated, when
service.modelPorts exposes them: trident's gateway listens on each, pinned to that model
(model_ports, on by default in trident).
*/}}
{{- define "trident.modelPorts" -}}
{{- if .Values.service.modelPorts -}}
{{- $cfg := include "trident.modelsJson" . | fromJson -}}
{{- range $id, $e := $cfg.models -}}
{{- if $e.port }}{{ int64 $e.port }} {{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}
