"""Lists a gRPC server's services with the stock Python client: grpcio and
grpcio-reflection's ProtoReflectionDescriptorDatabase (which speaks
grpc.reflection.v1alpha), as a Python tool or grpcio-based script would.

    reflection_list.py ADDRESS                      plaintext
    reflection_list.py ADDRESS CA CERT KEY NAME     mutual TLS, NAME as the
                                                    server name to verify

Prints the service names, one a line, and for each the number of methods
its descriptor has (resolved through reflection too). Exits 2 when grpcio or
grpcio-reflection is missing."""

import sys

try:
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    from google.protobuf.descriptor_pool import DescriptorPool
except ImportError as error:
    sys.stderr.write(
        "grpcio / grpcio-reflection missing (%s): "
        "python3 -m pip install grpcio grpcio-reflection\n" % error
    )
    sys.exit(2)


def channel(args):
    address = args[0]
    if len(args) == 1:
        return grpc.insecure_channel(address)
    ca, cert, key, name = args[1:5]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read(),
    )
    return grpc.secure_channel(
        address, credentials, options=(("grpc.ssl_target_name_override", name),)
    )


def main():
    with channel(sys.argv[1:]) as ch:
        grpc.channel_ready_future(ch).result(timeout=20)
        database = ProtoReflectionDescriptorDatabase(ch)
        pool = DescriptorPool(database)
        for service in database.get_services():
            methods = len(pool.FindServiceByName(service).methods)
            print("%s %d" % (service, methods))


main()
