#!/bin/sh
# One-shot MinIO setup for the p2p team server (the minio-init service; safe to re-run):
# - the buckets: P2P_BUCKET (DVC remote dvc/, shards shards/, Ray checkpoints runs/) and
#   MLFLOW_BUCKET (artifacts the MLflow server proxies),
# - a p2p user whose keys are AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, allowed only on those
#   buckets. The root credentials never leave the minio and minio-init containers.
set -eu
: "${MINIO_URL:?}" "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}" "${P2P_BUCKET:?}" "${MLFLOW_BUCKET:?}"

mc alias set p2p "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
for bucket in "$P2P_BUCKET" "$MLFLOW_BUCKET"; do
  mc mb --ignore-existing "p2p/$bucket"
done

policy=/tmp/p2p-rw.json
cat > "$policy" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:ListAllMyBuckets", "s3:GetBucketLocation"],
     "Resource": ["arn:aws:s3:::*"]},
    {"Effect": "Allow", "Action": ["s3:*"],
     "Resource": ["arn:aws:s3:::$P2P_BUCKET", "arn:aws:s3:::$P2P_BUCKET/*",
                  "arn:aws:s3:::$MLFLOW_BUCKET", "arn:aws:s3:::$MLFLOW_BUCKET/*"]}
  ]
}
JSON
mc admin policy create p2p p2p-rw "$policy"
mc admin user add p2p "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
if ! mc admin user info p2p "$AWS_ACCESS_KEY_ID" | grep -q "p2p-rw"; then
  mc admin policy attach p2p p2p-rw --user "$AWS_ACCESS_KEY_ID"
fi
echo "minio-init: buckets $P2P_BUCKET, $MLFLOW_BUCKET; user $AWS_ACCESS_KEY_ID has policy p2p-rw"
