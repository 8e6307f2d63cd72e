{{- define "nas-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nas-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "nas-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nas-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nas-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "nas-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nas-operator
{{- end }}

{{- define "nas-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nas-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* What the operator may do in a namespace it watches: its experiments, their Jobs, state and Events. */}}
{{- define "nas-operator.namespacedRules" -}}
- apiGroups: [nas.operator.dev]
  resources: [nasexperiments]
  verbs: [get, list, watch, patch]
- apiGroups: [nas.operator.dev]
  resources: [nasexperiments/status]
  verbs: [get, patch]
# Trial Jobs and Pods are followed by one list+watch each (label nas.operator.dev/experiment), not polled.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, update, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# A trial whose Job made no pod fails with the Job's FailedCreate Event (admission, a quota): read by listing.
- apiGroups: [""]
  resources: [events]
  verbs: [list]
{{- end }}
