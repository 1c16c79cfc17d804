"""The KOSMOS agents, each built on kosmos_grpc."""
