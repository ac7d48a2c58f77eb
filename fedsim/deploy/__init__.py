"""Deployment: the same strategies and client code, served over gRPC by Flower's SuperLink and SuperNodes."""
