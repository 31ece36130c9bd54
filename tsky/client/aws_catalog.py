"""`tsky catalog refresh aws`: rebuilding the AWS part of the catalog from the AWS APIs (imports boto3, so
it is a module of its own: the rest of `tsky.client.infra` loads without any cloud SDK)."""

from tsky.ops.catalog_aws import NoAwsCredentials as NoAwsCredentials
from tsky.ops.catalog_aws import refresh_aws as refresh_aws
