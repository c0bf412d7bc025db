"""The Open Inference Protocol over gRPC (grpc.aio): inference.GRPCInferenceService."""
