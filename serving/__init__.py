"""canary-serve's request path: the Ingress deployment, routing, the output contract and the app builder."""
