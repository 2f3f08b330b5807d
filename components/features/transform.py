"""Features, part 2: the tensorflow-transform graph, analyzed on the training split.

The preprocessing_fn is built from the feature registry: each feature's
``transform`` says what the graph does with it (vocabulary, z-score, ...), and the
crosses add user x item features computed from two raw features. The graph ships
inside every exported model, so serving applies exactly the training-time
transformation, and the models' raw inputs are the registry's features.
"""

import os

import apache_beam as beam
import pyarrow as pa
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
from tfx_bsl.coders import csv_decoder
from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

from recsys.core import contracts, storage
from recsys.core.beam_io import ReadDataset, from_list_batch, pipeline_options, to_list_array
from recsys.core.features import FeatureRegistry, load_registry
from recsys.core.schemas import load_schema


def preprocessing_fn_for(registry: FeatureRegistry):
    """The preprocessing_fn of ``registry``'s features and crosses."""

    def preprocessing_fn(inputs):
        outputs = {}
        # The top_ids most frequent ids keep their own index; every other id hashes
        # into one of hash_buckets indices after them (TFT's out-of-vocabulary buckets).
        vocabularies = {
            f.name: tft.vocabulary(inputs[f.name], vocab_filename=f.name, top_k=f.top_ids)
            for f in registry.select(transform="vocabulary")
        }
        for feature in registry.features.values():
            value, out = inputs[feature.name], feature.transformed_name
            if feature.transform == "vocabulary":
                outputs[out] = tft.apply_vocabulary(
                    value, vocabularies[feature.name], num_oov_buckets=feature.hash_buckets
                )
            elif feature.transform == "sequence":
                # Stays sparse (a list per row): the models pad it to the longest list
                # in a batch.
                outputs[out] = tft.apply_vocabulary(
                    value,
                    vocabularies[feature.of],
                    num_oov_buckets=registry[feature.of].hash_buckets,
                )
            elif feature.transform == "log_z_score":
                # Counts are heavy-tailed: log1p before z-scoring keeps a few giants
                # from dominating.
                outputs[out] = tft.scale_to_z_score(
                    tf.math.log1p(tf.maximum(tf.cast(value, tf.float32), 0.0))
                )
            elif feature.transform == "z_score":
                outputs[out] = tft.scale_to_z_score(value)
            elif feature.transform == "flag":
                outputs[out] = tf.cast(value, tf.float32)
            else:  # category (embedded by the models as is) and labels
                outputs[out] = value
        for cross in registry.crosses.values():
            outputs[cross.transformed_name] = history_has_item(
                *(inputs[name] for name in cross.inputs)
            )
        return outputs

    return preprocessing_fn


def history_has_item(history: tf.SparseTensor, item_id: tf.Tensor) -> tf.Tensor:
    """1.0 where the row's item id occurs in the row's history list, else 0.0."""
    rows = history.indices[:, 0]
    matches = tf.cast(tf.equal(history.values, tf.gather(item_id, rows)), tf.float32)
    found = tf.math.unsorted_segment_sum(matches, rows, tf.shape(item_id, out_type=tf.int64)[0])
    return tf.minimum(found, 1.0)


def _tfxio_config(schema_dir: str):
    schema = load_schema(contracts.EXAMPLES_SCHEMA, schema_dir)
    arrow_schema = csv_decoder.GetArrowSchema([f.name for f in schema.feature], schema)
    representations = tensor_representation_util.InferTensorRepresentationsFromSchema(schema)
    return schema, arrow_schema, tensor_adapter.TensorAdapterConfig(arrow_schema, representations)


def _to_tfxio_batch(batch: pa.RecordBatch, arrow_schema: pa.Schema) -> pa.RecordBatch:
    columns = [to_list_array(batch.column(field.name)).cast(field.type) for field in arrow_schema]
    return pa.RecordBatch.from_arrays(columns, schema=arrow_schema)


def _transformed_arrow_schema(transform_graph_dir: str) -> pa.Schema:
    """Flat columns, and lists for the variable-length outputs (id sequences)."""
    spec = tft.TFTransformOutput(transform_graph_dir).transformed_feature_spec()
    to_arrow = {"int64": pa.int64(), "float32": pa.float32(), "string": pa.binary()}
    return pa.schema(
        [
            (
                name,
                pa.list_(to_arrow[feature.dtype.name])
                if isinstance(feature, tf.io.VarLenFeature)
                else to_arrow[feature.dtype.name],
            )
            for name, feature in sorted(spec.items())
        ]
    )


def transform(
    train_dir: str,
    eval_dir: str,
    schema_dir: str,
    transform_graph_dir: str,
    transformed_dirs: dict[str, str],
    temp_dir: str,
    beam_pipeline_args: str = "[]",
):
    """Analyze on train only; apply the graph to train and eval; write Parquet.
    ``schema_dir`` holds the examples schema and the feature registry (validate's
    ``schema`` output: the ones the data was validated against)."""
    schema, arrow_schema, adapter_config = _tfxio_config(schema_dir)
    preprocessing_fn = preprocessing_fn_for(load_registry(schema_dir))
    options = pipeline_options(beam_pipeline_args)
    with beam.Pipeline(options=options) as pipeline, tft_beam.Context(temp_dir=temp_dir):
        train = (
            pipeline
            | "ReadTrain" >> ReadDataset(train_dir)
            | "TrainToTFXIO" >> beam.Map(_to_tfxio_batch, arrow_schema)
        )
        transform_fn = (train, adapter_config) | tft_beam.AnalyzeDataset(preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(transform_graph_dir)
    # With TFXIO input TFT does not record the raw schema; exporters need it to
    # build the raw-feature serving signatures (TFX's Transform does the same).
    metadata_io.write_metadata(
        dataset_metadata.DatasetMetadata(schema),
        os.path.join(transform_graph_dir, tft.TFTransformOutput.RAW_METADATA_DIR),
    )

    output_schema = _transformed_arrow_schema(transform_graph_dir)
    splits = {"train": train_dir, "eval": eval_dir}
    with beam.Pipeline(options=options) as pipeline, tft_beam.Context(temp_dir=temp_dir):
        transform_fn = pipeline | tft_beam.ReadTransformFn(transform_graph_dir)
        for split, directory in splits.items():
            raw = (
                pipeline
                | f"Read[{split}]" >> ReadDataset(directory)
                | f"ToTFXIO[{split}]" >> beam.Map(_to_tfxio_batch, arrow_schema)
            )
            transformed, _ = (
                (raw, adapter_config),
                transform_fn,
            ) | f"Transform[{split}]" >> tft_beam.TransformDataset(output_record_batches=True)
            storage.makedirs(transformed_dirs[split])
            _ = (
                transformed
                | f"Flatten[{split}]"
                >> beam.Map(
                    lambda pair, schema: (
                        pa.Table.from_batches([from_list_batch(pair[0], schema)])
                        .select(schema.names)
                        .cast(schema)
                    ),
                    output_schema,
                ).with_output_types(pa.Table)
                | f"Write[{split}]"
                >> beam.io.WriteToParquetBatched(
                    os.path.join(transformed_dirs[split], "part"),
                    schema=output_schema,
                    file_name_suffix=".parquet",
                )
            )
