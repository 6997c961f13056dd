"""The gRPC runtime shared by every zsc service and client."""
