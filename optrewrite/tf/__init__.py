"""The TensorFlow path: GraphDef / MetaGraphDef loading, update-site discovery and passes."""
