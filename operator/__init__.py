"""The kopf operator: FineTuneJob and ModelDeployment reconciled into KubeRay and vLLM."""
