"""`nasctl dashboard`: a live web page over local results directories and a cluster (through the user's kubeconfig)."""
