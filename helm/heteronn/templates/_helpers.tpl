{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "heteronn.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "heteronn.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "heteronn.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "heteronn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: heteronn
{{- end -}}

{{- define "heteronn.selector" -}}
app.kubernetes.io/name: {{ include "heteronn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "heteronn.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Where the nodes reach the coordinator: the in-release Service or an external address. */}}
{{- define "heteronn.coordinatorAddress" -}}
{{- if .Values.coordinator.enabled -}}
{{ .Values.coordinator.name }}:{{ .Values.coordinator.port }}
{{- else -}}
{{ required "coordinator.address is required when coordinator.enabled=false" .Values.coordinator.address }}
{{- end -}}
{{- end -}}

{{/* Secret holding ca.crt/tls.crt/tls.key of node id `.name` (dict: root, name, secretName). */}}
{{- define "heteronn.tlsSecret" -}}
{{- .secretName | default (printf "%s%s" .root.Values.tls.secretPrefix .name) -}}
{{- end -}}

{{- define "heteronn.metricsAnnotations" -}}
{{- if .Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* exec probe running the gRPC health check with the pod's own certificate. */}}
{{- define "heteronn.probe" -}}
exec:
  command: ["heteronn", "health"]
periodSeconds: {{ .Values.probes.periodSeconds }}
timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
failureThreshold: {{ .Values.probes.failureThreshold }}
{{- end -}}

{{/* The same check while the process starts (importing torch takes a while). */}}
{{- define "heteronn.startupProbe" -}}
exec:
  command: ["heteronn", "health"]
periodSeconds: 5
timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
failureThreshold: {{ .Values.probes.startupFailureThreshold }}
{{- end -}}
