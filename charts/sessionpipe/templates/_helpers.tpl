{{/* Names and labels shared by every template. */}}

{{- define "sessionpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<name>, or the release alone when it contains the name, or fullnameOverride; 52
characters leave room for the longest suffix ("-operator-leader") within 63. */}}
{{- define "sessionpipe.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "sessionpipe.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sessionpipe.labels" -}}
app.kubernetes.io/name: {{ include "sessionpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sessionpipe
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "sessionpipe.operatorSelector" -}}
app.kubernetes.io/name: {{ include "sessionpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "sessionpipe.operatorServiceAccount" -}}
{{- default (printf "%s-operator" (include "sessionpipe.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{- define "sessionpipe.jobServiceAccount" -}}
{{- default (printf "%s-job" (include "sessionpipe.fullname" .)) .Values.jobs.serviceAccount.name -}}
{{- end -}}

{{- define "sessionpipe.operatorImage" -}}
{{- printf "%s:%s" .Values.image.operator.repository (default .Chart.AppVersion .Values.image.operator.tag) -}}
{{- end -}}

{{- define "sessionpipe.jobImage" -}}
{{- printf "%s:%s" .Values.image.job.repository (default .Chart.AppVersion .Values.image.job.tag) -}}
{{- end -}}

{{/* Namespaces that get job service accounts and the operator's Roles: the watched ones, or the release's. */}}
{{- define "sessionpipe.jobNamespaces" -}}
{{- $namespaces := .Values.operator.watchNamespaces | default (list .Release.Namespace) -}}
{{- if not (has .Release.Namespace $namespaces) -}}
{{- $namespaces = append $namespaces .Release.Namespace -}}
{{- end -}}
{{- join "," $namespaces -}}
{{- end -}}

{{- define "sessionpipe.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* What SessionProcessors may ask for (jobPolicy), comma-separated; "*" when the policy is off. */}}
{{- define "sessionpipe.allowedImages" -}}
{{- if .Values.jobPolicy.enabled -}}
{{- .Values.jobPolicy.allowedImages | default (list .Values.image.job.repository) | join "," -}}
{{- else -}}
*
{{- end -}}
{{- end -}}

{{- define "sessionpipe.allowedServiceAccounts" -}}
{{- if .Values.jobPolicy.enabled -}}
{{- .Values.jobPolicy.allowedServiceAccounts | default (list (include "sessionpipe.jobServiceAccount" .)) | join "," -}}
{{- else -}}
*
{{- end -}}
{{- end -}}

{{/* The dashboard's pods. */}}
{{- define "sessionpipe.dashboardSelector" -}}
app.kubernetes.io/name: {{ include "sessionpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dashboard
{{- end -}}

{{/* Co-location on a ReadWriteOnce database claim (dashboard.colocate): the label the dashboard and
the job pods on that claim share, as key: value, and the pod affinity every one of them has to it.
Empty when the dashboard is off or colocate is false. */}}
{{- define "sessionpipe.colocationLabel" -}}
{{- if and .Values.dashboard.enabled .Values.dashboard.colocate -}}
sessionpipe.io/database-claim: {{ .Values.storage.database.claimName | trunc 63 | trimSuffix "-" | trimSuffix "." | quote }}
{{- end -}}
{{- end -}}

{{- define "sessionpipe.colocationAffinity" -}}
{{- with include "sessionpipe.colocationLabel" . -}}
podAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - labelSelector:
        matchLabels:
          {{- . | nindent 10 }}
      topologyKey: kubernetes.io/hostname
{{- end -}}
{{- end -}}
