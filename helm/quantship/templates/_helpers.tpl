{{/* Names and labels shared by every object of the chart. */}}

{{- define "quantship.name" -}}
{{- include "quantship.suffixed" (list .Release.Name "operator") -}}
{{- end -}}

{{/*
A name and a suffix within 63 characters: the name is cut before the suffix is added, never the
suffix, which would make "<name>-crds" of a long name the name itself (two objects, one name).
Call with (list $name "suffix").
*/}}
{{- define "quantship.suffixed" -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (index . 0 | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix -}}
{{- end -}}

{{/*
The operator's metrics Service. A Service's name is a DNS-1035 label, stricter than a release name:
a dot (rel.v1) becomes "-"; a leading digit is refused here, in one line, rather than by the API
server halfway through the install.
*/}}
{{- define "quantship.metricsService" -}}
{{- if regexMatch "^[0-9]" .Release.Name -}}
{{- fail (printf "release name %s starts with a digit, which a Service's name cannot: name the release with a letter first" .Release.Name) -}}
{{- end -}}
{{- include "quantship.suffixed" (list (include "quantship.name" . | replace "." "-") "metrics") -}}
{{- end -}}

{{- define "quantship.labels" -}}
app.kubernetes.io/name: quantship
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "quantship.selectorLabels" -}}
app.kubernetes.io/name: quantship
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "quantship.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "quantship.name" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "quantship.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
Whether an optional object renders: "true" forces it, "false" drops it, "auto" renders it when the
cluster serves its API (the Prometheus Operator's CRDs). Call with
(dict "root" $ "setting" .Values.x.enabled "api" "monitoring.coreos.com/v1/ServiceMonitor").
*/}}
{{- define "quantship.wanted" -}}
{{- $setting := toString .setting -}}
{{- if or (eq $setting "true") (and (eq $setting "auto") (.root.Capabilities.APIVersions.Has .api)) -}}
true
{{- end -}}
{{- end -}}

{{/* The generated rule groups, with the Grafana and runbook links this install uses. */}}
{{- define "quantship.ruleGroups" -}}
{{- $rules := .Files.Get "files/prometheus-rules.yaml" -}}
{{- $rules = $rules | replace "http://localhost:3000" (trimSuffix "/" .Values.grafana.url) -}}
{{- $rules = $rules | replace "https://github.com/quantship/quantship/blob/main/docs/runbooks.md" .Values.alerts.runbookUrl -}}
{{- $rules }}
{{ tpl (.Files.Get "files/drift-thresholds.yaml") . }}
{{- end -}}
