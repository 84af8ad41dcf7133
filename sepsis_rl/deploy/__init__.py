"""Running on clusters: job submission, KubeRay manifest checks, the serve config for RayService, dashboards."""
