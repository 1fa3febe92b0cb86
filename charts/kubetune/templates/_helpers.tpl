{{/* Names and labels shared by every template. */}}

{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubetune.fullname" -}}
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

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end -}}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
kubetune's images, one scheme (kubetune/common/images.py): <registry>/<prefix>/<name>:<tag>, or
<registry>/<prefix>/<name>@<digest> when pinned. Call with (dict "ctx" $ "name" "trainer"
"suffix" "cpu" "digest" "sha256:...").
*/}}
{{- define "kubetune.imageRef" -}}
{{- $images := .ctx.Values.images -}}
{{- $repo := list $images.registry $images.prefix .name | compact | join "/" -}}
{{- if .digest -}}
{{- printf "%s@%s" $repo .digest -}}
{{- else -}}
{{- $tag := default .ctx.Chart.AppVersion $images.tag | replace "+" "-" -}}
{{- if .suffix -}}
{{- printf "%s:%s-%s" $repo $tag .suffix -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.image" -}}
{{- include "kubetune.imageRef" (dict "ctx" . "name" "operator" "digest" .Values.images.operator.digest) -}}
{{- end -}}

{{- define "kubetune.trainerImage" -}}
{{- $trainer := .Values.images.trainer -}}
{{- include "kubetune.imageRef" (dict "ctx" . "name" "trainer" "suffix" (ternary "cpu" "" (eq $trainer.variant "cpu")) "digest" $trainer.digest) -}}
{{- end -}}

{{- define "kubetune.gatewayImage" -}}
{{- include "kubetune.imageRef" (dict "ctx" . "name" "gateway" "digest" .Values.images.gateway.digest) -}}
{{- end -}}

{{/* The namespaces the operator watches, comma-separated; empty means all. */}}
{{- define "kubetune.watchNamespaces" -}}
{{- if eq .Values.operator.watch.mode "namespaced" -}}
{{- if not .Values.operator.watch.namespaces -}}
{{- fail "operator.watch.mode namespaced needs at least one namespace in operator.watch.namespaces" -}}
{{- end -}}
{{- join "," .Values.operator.watch.namespaces -}}
{{- end -}}
{{- end -}}

{{/*
The operator's permissions on namespaced resources: the same rules go into the ClusterRole
(cluster mode) or into one Role per watched namespace (namespaced mode). Every rule names its
resources and verbs; Secrets only get/create (the engine key). Per-job Roles the operator creates grant only
get on finetunejobs and get/patch on finetunejobs/status (and the same on modeldeployments for
the monitor job), which the operator holds itself, so the API server's escalation check passes
without the bind or escalate verbs.
*/}}
{{- define "kubetune.namespacedRules" -}}
# Our resources: kopf adds finalizers and bookkeeping annotations (patch); the retraining
# policy creates the next FineTuneJob (create). Users delete them, the operator never does.
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs", "modeldeployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs/status", "modeldeployments/status"]
  verbs: ["get", "patch", "update"]
# Children the operator renders and owns (created, updated in place, garbage-collected by
# owner references, deleted on suspend or rollout).
- apiGroups: [""]
  resources: ["configmaps", "services", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs", "cronjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Only read: pods to report the real cause of a failure (ImagePullBackOff, OOMKilled),
# claims to check that pvc:// URIs exist before starting anything.
- apiGroups: [""]
  resources: ["pods", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch"]
# The one Secret the operator owns: each ModelDeployment's vLLM engine key, generated once and
# read back by name. No list or watch (that would expose every Secret in the namespace), no
# update or delete (garbage collection follows the owner reference).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
# kopf posts Events on the objects it handles.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.integrations.kuberay.enabled }}
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The Ray cluster of a RayJob is KubeRay's child: read to report why it does not start.
- apiGroups: ["ray.io"]
  resources: ["rayclusters"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- if .Values.integrations.kueue.enabled }}
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- if .Values.integrations.keda.enabled }}
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- end }}
{{- if .Values.integrations.prometheusOperator.enabled }}
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors", "podmonitors", "prometheusrules"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- end }}
{{- end -}}
