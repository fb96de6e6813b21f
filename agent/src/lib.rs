//! Flotilla agent library: configuration, target discovery, database drivers and the gRPC service.
