"""A generic gRPC client of runnel's serving service that knows no compiled stubs: it learns
the API from the server's reflection service (grpcio-reflection's descriptor database), as
grpcurl or a user's tool would, builds the request from JSON and prints the answer as JSON.

Usage: python serving_reflection_client.py ADDRESS METHOD REQUEST_JSON [TOKEN]

ADDRESS is host:port (plain text), METHOD a method of runnel.serving.v1.Serving (e.g.
QueryWindows), REQUEST_JSON the request in protobuf's JSON mapping. TOKEN, when given, goes
as `authorization: Bearer TOKEN`. Prints one JSON document: the response, or a list of
responses for a server-streaming method. Exits 2 with the status on a gRPC error, 1 when the
service is not found through reflection.
"""

import json
import sys

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "runnel.serving.v1.Serving"


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token to every call, reflection's included."""

    def __init__(self, token):
        self._metadata = (("authorization", f"Bearer {token}"),)

    def _details(self, details):
        return details._replace(metadata=tuple(details.metadata or ()) + self._metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


def main():
    address, method_name, request_json = sys.argv[1], sys.argv[2], sys.argv[3]
    token = sys.argv[4] if len(sys.argv) > 4 else None
    channel = grpc.insecure_channel(address)
    if token:
        channel = grpc.intercept_channel(channel, _Bearer(token))
    database = ProtoReflectionDescriptorDatabase(channel)
    try:
        services = database.get_services()
    except grpc.RpcError as error:
        print(f"{error.code().name}: {error.details()}", file=sys.stderr)
        sys.exit(2)
    if SERVICE not in services:
        print(f"{SERVICE} is not among the reflected services {services}", file=sys.stderr)
        sys.exit(1)
    pool = DescriptorPool(database)
    method = pool.FindServiceByName(SERVICE).methods_by_name[method_name]
    request_class = GetMessageClass(method.input_type)
    response_class = GetMessageClass(method.output_type)
    path = f"/{SERVICE}/{method.name}"
    request = json_format.Parse(request_json, request_class())
    try:
        if method.server_streaming:
            call = channel.unary_stream(
                path,
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            answer = [json_format.MessageToDict(item) for item in call(request, timeout=30)]
        else:
            call = channel.unary_unary(
                path,
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            answer = json_format.MessageToDict(call(request, timeout=30))
    except grpc.RpcError as error:
        print(f"{error.code().name}: {error.details()}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
