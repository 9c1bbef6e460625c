{{/* Names, labels and computed values shared by the templates. */}}

{{/* The chart name, or nameOverride. */}}
{{- define "dbconn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource name prefix: fullnameOverride, else the release name when it already contains
the chart name, else <release>-<chart>. 63 characters at most (DNS label).
*/}}
{{- define "dbconn.fullname" -}}
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

{{- define "dbconn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "dbconn.labels" -}}
helm.sh/chart: {{ include "dbconn.chart" . }}
{{ include "dbconn.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dbconn
{{- end }}

{{/* Labels that select the operator pods; never change them on upgrade (immutable selector). */}}
{{- define "dbconn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dbconn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "dbconn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dbconn.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag of the dbconn image. */}}
{{- define "dbconn.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The sidecar image: pooler.image, else the operator's. */}}
{{- define "dbconn.poolerImage" -}}
{{- .Values.pooler.image | default (include "dbconn.image" .) }}
{{- end }}

{{/* The MutatingWebhookConfiguration (cluster-scoped) carries the full name. */}}
{{- define "dbconn.webhookConfigName" -}}
{{- include "dbconn.fullname" . }}
{{- end }}

{{- define "dbconn.webhookServiceName" -}}
{{- printf "%s-webhook" (include "dbconn.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dbconn.metricsServiceName" -}}
{{- printf "%s-metrics" (include "dbconn.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dbconn.webhookSecretName" -}}
{{- .Values.webhook.secretName | default (printf "%s-webhook-tls" (include "dbconn.fullname" .)) }}
{{- end }}

{{- define "dbconn.certificateName" -}}
{{- printf "%s-webhook" (include "dbconn.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dbconn.leaseName" -}}
{{- .Values.operator.leaseName | default (printf "%s-operator" (include "dbconn.fullname" .)) }}
{{- end }}

{{/* The container port of an "host:port" address value. */}}
{{- define "dbconn.portOf" -}}
{{- regexReplaceAll "^.*:" . "" }}
{{- end }}

{{/*
Values that would render a broken install fail here, with a message saying what to fix,
rather than at admission time.
*/}}
{{- define "dbconn.validate" -}}
{{- $t := int .Values.webhook.timeoutSeconds }}
{{- if or (lt $t 1) (gt $t 10) }}
{{- fail (printf "webhook.timeoutSeconds must be between 1 and 10 (the apiserver's limit), got %v" .Values.webhook.timeoutSeconds) }}
{{- end }}
{{- if not (has .Values.webhook.failurePolicy (list "Fail" "Ignore")) }}
{{- fail (printf "webhook.failurePolicy must be Fail or Ignore, got %q" .Values.webhook.failurePolicy) }}
{{- end }}
{{- if not (has .Values.webhook.failureMode (list "deny" "admit")) }}
{{- fail (printf "webhook.failureMode must be deny or admit, got %q" .Values.webhook.failureMode) }}
{{- end }}
{{- if not (has .Values.webhook.budgetMode (list "warn" "refuse")) }}
{{- fail (printf "webhook.budgetMode must be warn or refuse, got %q" .Values.webhook.budgetMode) }}
{{- end }}
{{- if not (has .Values.logFormat (list "text" "json")) }}
{{- fail (printf "logFormat must be text or json, got %q" .Values.logFormat) }}
{{- end }}
{{- if and .Values.webhook.url (not (hasPrefix "https://" .Values.webhook.url)) }}
{{- fail (printf "webhook.url must start with https:// (the apiserver only calls webhooks over TLS), got %q" .Values.webhook.url) }}
{{- end }}
{{- if lt (int .Values.webhook.maxConnectionsPerPod) 1 }}
{{- fail "webhook.maxConnectionsPerPod must be at least 1" }}
{{- end }}
{{- end }}
