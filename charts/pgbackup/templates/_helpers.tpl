{{/* Names and labels shared by the templates. */}}

{{- define "pgbackup.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pgbackup.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pgbackup.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pgbackup.selectorLabels" -}}
app.kubernetes.io/name: pgbackup
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "pgbackup.labels" -}}
{{ include "pgbackup.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pgbackup.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "pgbackup.agentImage" -}}
{{- default (printf "pgbackup/agent:{major}-%s" .Chart.AppVersion) .Values.agent.image -}}
{{- end -}}

{{/* The operator's rules (files/operator-rules.yaml), split by where they apply. */}}
{{- define "pgbackup.rules" -}}
{{- .Files.Get "files/operator-rules.yaml" -}}
{{- end -}}
