"""sessionpipe's control plane: the kopf operator for SessionProcessor resources."""
