{{/*
Expand the name of the chart.
*/}}
{{- define "purger.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
Truncated at 63 characters because some Kubernetes name fields are limited to that (by the DNS
naming spec). If the release name contains the chart name it is used as the full name.
*/}}
{{- define "purger.fullname" -}}
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

{{/*
A name derived from the full name with a suffix, still at most 63 characters:
  include "purger.componentName" (list . "scheduler")
*/}}
{{- define "purger.componentName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "purger.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{/*
Chart name and version as used by the helm.sh/chart label.
*/}}
{{- define "purger.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "purger.labels" -}}
helm.sh/chart: {{ include "purger.chart" . }}
{{ include "purger.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "purger.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: stable across upgrades, so without the chart or app version.
*/}}
{{- define "purger.selectorLabels" -}}
app.kubernetes.io/name: {{ include "purger.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount the pods use.
*/}}
{{- define "purger.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "purger.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: the digest wins over the tag; the tag defaults to the appVersion.
*/}}
{{- define "purger.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Name of the ConfigMap with the retention policy.
*/}}
{{- define "purger.policyConfigMapName" -}}
{{- if .Values.policy.existingConfigMap }}
{{- .Values.policy.existingConfigMap }}
{{- else }}
{{- include "purger.componentName" (list . "policy") }}
{{- end }}
{{- end }}

{{/*
The retention policy file rendered from values (the format of config/retention.yaml).
*/}}
{{- define "purger.policy" -}}
{{- $known := list "topic" "retention" "minimum_retention" "maximum_retention" "controller" "legal_basis" "statement_row" "description" "tenant_overrides" -}}
version: {{ .Values.policy.version | toString | toJson }}
categories:
{{- range $name, $category := .Values.policy.categories }}
  {{ $name }}:
    {{- range $key := $known }}
    {{- if ne $key "tenant_overrides" }}
    {{- if hasKey $category $key }}
    {{ $key }}: {{ index $category $key | toString | toJson }}
    {{- end }}
    {{- end }}
    {{- end }}
    {{- with $category.tenant_overrides }}
    tenant_overrides:
      {{- range $tenant, $retention := . }}
      {{ $tenant | toJson }}: {{ $retention | toString | toJson }}
      {{- end }}
    {{- else }}
    tenant_overrides: {}
    {{- end }}
    {{- with omit $category "topic" "retention" "minimum_retention" "maximum_retention" "controller" "legal_basis" "statement_row" "description" "tenant_overrides" }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
Whether SASL and TLS are in use for Kafka.
*/}}
{{- define "purger.kafkaSasl" -}}
{{- if has .Values.kafka.securityProtocol (list "SASL_PLAINTEXT" "SASL_SSL") }}true{{ end }}
{{- end }}
{{- define "purger.kafkaTls" -}}
{{- if and (has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL")) .Values.kafka.tls.existingSecret }}true{{ end }}
{{- end }}

{{/*
Checks of the values that a JSON schema cannot express. Included by every workload template.
*/}}
{{- define "purger.validate" -}}
{{- if and (include "purger.kafkaSasl" .) (not .Values.kafka.sasl.existingSecret) }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.existingSecret: the name of an existing Secret with the SASL username and password" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if and (include "purger.kafkaTls" .) (not .Values.kafka.tls.caKey) (not .Values.kafka.tls.certKey) }}
{{- fail "kafka.tls.existingSecret is set but neither kafka.tls.caKey nor kafka.tls.certKey names a key in it" }}
{{- end }}
{{- if and .Values.kafka.tls.certKey (not .Values.kafka.tls.keyKey) }}
{{- fail "kafka.tls.certKey is set but kafka.tls.keyKey is not: a client certificate needs its key" }}
{{- end }}
{{- if and .Values.kafka.tls.keyKey (not .Values.kafka.tls.certKey) }}
{{- fail "kafka.tls.keyKey is set but kafka.tls.certKey is not: a client key needs its certificate" }}
{{- end }}
{{- $consumers := mul (int .Values.consumer.replicas) (int .Values.consumer.workers) }}
{{- if and (gt (int .Values.consumer.topicPartitions) 0) (gt (int $consumers) (int .Values.consumer.topicPartitions)) }}
{{- fail (printf "consumer.replicas × consumer.workers = %d consumers, but the busiest topic has consumer.topicPartitions = %d partitions: the extra consumers would sit idle" (int $consumers) (int .Values.consumer.topicPartitions)) }}
{{- end }}
{{- end }}

{{/*
Environment of every purger container: settings from values, credentials from existing Secrets.
The long-running pods and the operator Job connect with the runtime role (database.existingSecret).
*/}}
{{- define "purger.env" -}}
{{ include "purger.envFor" (list . "runtime") }}
{{- end }}

{{/*
The database Secret of a role: "runtime" (database.*) or "migrate" (database.migrate.*, falling
back to the runtime Secret when database.migrate.existingSecret is empty).
*/}}
{{- define "purger.databaseSecret" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- $db := $root.Values.database }}
{{- if and (eq $role "migrate") $db.migrate.existingSecret }}
{{- toJson (dict "name" $db.migrate.existingSecret "urlKey" $db.migrate.urlKey "passwordKey" $db.migrate.passwordKey) }}
{{- else }}
{{- toJson (dict "name" $db.existingSecret "urlKey" $db.urlKey "passwordKey" $db.passwordKey) }}
{{- end }}
{{- end }}

{{/*
Environment of a purger container connecting as a role: include "purger.envFor" (list . "migrate")
*/}}
{{- define "purger.envFor" -}}
{{- $role := index . 1 }}
{{- $secret := include "purger.databaseSecret" . | fromJson }}
{{- with index . 0 }}
- name: PURGER_HTTP_HOST
  value: "0.0.0.0"
- name: PURGER_HTTP_PORT
  value: {{ .Values.config.httpPort | quote }}
- name: PURGER_POLICY_FILE
  value: /etc/purger/policy/retention.yaml
- name: PURGER_PURGE_SCHEDULE
  value: {{ .Values.config.purgeSchedule | quote }}
- name: PURGER_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: PURGER_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: PURGER_DEFAULT_COUNTRY_CODE
  value: {{ .Values.config.defaultCountryCode | toString | quote }}
- name: PURGER_LIVENESS_TIMEOUT_SECONDS
  value: {{ .Values.config.livenessTimeoutSeconds | default 180 | toString | quote }}
- name: PURGER_AUDIT_ANCHOR_TOPIC
  value: {{ .Values.config.auditAnchorTopic | quote }}
- name: PURGER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret.name | quote }}
      key: {{ $secret.urlKey | quote }}
{{- if $secret.passwordKey }}
- name: PURGER_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret.name | quote }}
      key: {{ $secret.passwordKey | quote }}
{{- end }}
{{- if and (eq $role "migrate") .Values.database.runtimeUser }}
- name: PURGER_DATABASE_RUNTIME_USER
  value: {{ .Values.database.runtimeUser | quote }}
{{- end }}
- name: PURGER_KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: PURGER_KAFKA_GROUP_ID
  value: {{ .Values.kafka.groupId | quote }}
- name: PURGER_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if include "purger.kafkaSasl" . }}
- name: PURGER_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: PURGER_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret | quote }}
      key: {{ .Values.kafka.sasl.usernameKey | quote }}
- name: PURGER_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret | quote }}
      key: {{ .Values.kafka.sasl.passwordKey | quote }}
{{- end }}
{{- if include "purger.kafkaTls" . }}
{{- if .Values.kafka.tls.caKey }}
- name: PURGER_KAFKA_SSL_CAFILE
  value: /etc/purger/kafka-tls/ca.crt
{{- end }}
{{- if .Values.kafka.tls.certKey }}
- name: PURGER_KAFKA_SSL_CERTFILE
  value: /etc/purger/kafka-tls/tls.crt
- name: PURGER_KAFKA_SSL_KEYFILE
  value: /etc/purger/kafka-tls/tls.key
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Volume mounts of every purger container.
*/}}
{{- define "purger.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: policy
  mountPath: /etc/purger/policy
  readOnly: true
{{- if include "purger.kafkaTls" . }}
- name: kafka-tls
  mountPath: /etc/purger/kafka-tls
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Volumes of every purger pod. The policy ConfigMap name is passed in (the migration hook uses its
own copy): include "purger.volumes" (list . $configMapName)
*/}}
{{- define "purger.volumes" -}}
{{- $root := index . 0 }}
{{- $policyConfigMap := index . 1 -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $root.Values.tmpSizeLimit }}
- name: policy
  configMap:
    name: {{ $policyConfigMap }}
    items:
      - key: retention.yaml
        path: retention.yaml
{{- if include "purger.kafkaTls" $root }}
- name: kafka-tls
  secret:
    secretName: {{ $root.Values.kafka.tls.existingSecret }}
    defaultMode: 0440
    items:
      {{- if $root.Values.kafka.tls.caKey }}
      - key: {{ $root.Values.kafka.tls.caKey }}
        path: ca.crt
      {{- end }}
      {{- if $root.Values.kafka.tls.certKey }}
      - key: {{ $root.Values.kafka.tls.certKey }}
        path: tls.crt
      - key: {{ $root.Values.kafka.tls.keyKey }}
        path: tls.key
      {{- end }}
{{- end }}
{{- with $root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod-level settings shared by every purger pod (Deployments, Jobs, the test pod); the
ServiceAccount name is set by each template.
*/}}
{{- define "purger.podSpecCommon" -}}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Probes of the long-running containers.
*/}}
{{- define "purger.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml .Values.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  {{- toYaml .Values.readinessProbe | nindent 2 }}
{{- end }}

{{/*
Pod template annotations: a checksum of the policy rolls the pods when it changes.
*/}}
{{- define "purger.podAnnotations" -}}
{{- if not .Values.policy.existingConfigMap }}
checksum/policy: {{ include "purger.policy" . | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
PromQL duration of a number of seconds, in the largest whole unit: 7200 -> 2h, 5400 -> 90m.
*/}}
{{- define "purger.promDuration" -}}
{{- $s := int . }}
{{- if and (gt $s 0) (eq (mod $s 3600) 0) }}
{{- printf "%dh" (div $s 3600) }}
{{- else if and (gt $s 0) (eq (mod $s 60) 0) }}
{{- printf "%dm" (div $s 60) }}
{{- else }}
{{- printf "%ds" $s }}
{{- end }}
{{- end }}
