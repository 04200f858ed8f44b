# Set-up of the Flink peer of the Spark baseline (benches/flink/city_job.py). Source it from
# benches/e2e.sh; it defines functions only.
#
#   flink_setup
#       Reads TARGET, CACHE and WORK, and calls log, die, maven_fetch / jars_not_in
#       (scripts/lib/maven.sh) and pyvenv_sync (scripts/lib/pyvenv.sh), all of which the caller
#       defines. Run from the repository root.
#       - installs benches/flink/requirements.txt (apache-flink from PyPI: Flink itself, with a
#         local mini-cluster; pyarrow) into $TARGET/flink-venv, again when the file's sha256
#         changes (stamp: $TARGET/flink-venv/.requirements.sha256);
#       - fetches from Maven Central, through the local repository $CACHE/m2, into
#         $CACHE/flink-$FLINK_VERSION-jars/libs: the Kafka SQL connector, the Parquet format
#         and the Hadoop classes the Parquet format needs (hadoop-client-api and
#         hadoop-client-runtime, third-party classes shaded; commons-logging, which Hadoop
#         logs through and Flink's lib/ lacks);
#       - and into $CACHE/flink-$FLINK_VERSION-s3: the S3 file system plugin, laid out as
#         $CACHE/flink-$FLINK_VERSION-s3/plugins/s3-fs-hadoop/flink-s3-fs-hadoop-*.jar (a
#         plugin has its own class loader: it must not be on the job's classpath).
#       Sets FLINK_VERSION (from requirements.txt), FLINK_PYTHON (the venv's python), FLINK_JARS
#       (comma-separated paths for city_job.py --jars, leaving out any jar pyflink's lib/
#       ships already) and FLINK_PLUGINS (the plugins directory: export it as
#       FLINK_PLUGINS_DIR when running city_job.py with s3:// output).
#       Logs in $WORK/flink-jars-mvn.log and $WORK/flink-s3-mvn.log.

# Built for Flink 2.2, works with 2.3 (the newest on Maven Central when this was written).
FLINK_KAFKA_CONNECTOR_VERSION=5.0.0-2.2
# The Parquet format's Hadoop classes (org.apache.hadoop.conf.Configuration, fs.Path, the
# mapreduce output format): hadoop-client-api has them, its third-party dependencies are shaded
# into hadoop-client-runtime, so nothing clashes with Flink's lib/.
FLINK_HADOOP_VERSION=3.4.2

flink_setup() {
    local venv=$TARGET/flink-venv
    FLINK_VERSION=$(sed -n 's/^apache-flink==//p' benches/flink/requirements.txt)
    [[ -n $FLINK_VERSION ]] || die "benches/flink/requirements.txt pins no apache-flink==VERSION"
    pyvenv_sync "$venv" benches/flink/requirements.txt "apache-flink $FLINK_VERSION (≈ 850 MB)" ||
        die "pip could not install benches/flink/requirements.txt into $venv"
    FLINK_PYTHON=$venv/bin/python

    local jars_dir=$CACHE/flink-$FLINK_VERSION-jars
    if [[ ! -f $jars_dir/.complete ]]; then
        # flink-dist (pyflink's lib/) has slf4j-api, snappy-java and jsr305 already (unshaded).
        local ex='<exclusions>' a
        for a in org.slf4j:slf4j-api org.xerial.snappy:snappy-java com.google.code.findbugs:jsr305; do
            ex+="<exclusion><groupId>${a%%:*}</groupId><artifactId>${a#*:}</artifactId></exclusion>"
        done
        ex+='</exclusions>'
        log "fetching the Kafka connector, the Parquet format and Hadoop's client for Flink $FLINK_VERSION from Maven Central into $jars_dir"
        maven_fetch "$jars_dir" "the Kafka connector and Parquet format of Flink $FLINK_VERSION" "$CACHE/m2" "$WORK/flink-jars-mvn.log" \
            "<dependency><groupId>org.apache.flink</groupId><artifactId>flink-sql-connector-kafka</artifactId><version>$FLINK_KAFKA_CONNECTOR_VERSION</version></dependency>" \
            "<dependency><groupId>org.apache.flink</groupId><artifactId>flink-sql-parquet</artifactId><version>$FLINK_VERSION</version>$ex</dependency>" \
            "<dependency><groupId>org.apache.hadoop</groupId><artifactId>hadoop-client-api</artifactId><version>$FLINK_HADOOP_VERSION</version>$ex</dependency>" \
            "<dependency><groupId>org.apache.hadoop</groupId><artifactId>hadoop-client-runtime</artifactId><version>$FLINK_HADOOP_VERSION</version>$ex</dependency>" ||
            die "Maven could not fetch the Flink connector jars (log: $WORK/flink-jars-mvn.log)"
    fi
    local s3_dir=$CACHE/flink-$FLINK_VERSION-s3
    if [[ ! -f $s3_dir/.complete || ! -d $s3_dir/plugins/s3-fs-hadoop ]]; then
        log "fetching flink-s3-fs-hadoop:$FLINK_VERSION from Maven Central into $s3_dir"
        # A self-contained (shaded) jar: its POM's dependencies are not needed.
        maven_fetch "$s3_dir" "the S3 file system plugin of Flink $FLINK_VERSION" "$CACHE/m2" "$WORK/flink-s3-mvn.log" \
            "<dependency><groupId>org.apache.flink</groupId><artifactId>flink-s3-fs-hadoop</artifactId><version>$FLINK_VERSION</version><exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions></dependency>" ||
            die "Maven could not fetch the Flink S3 plugin (log: $WORK/flink-s3-mvn.log)"
        rm -rf -- "$s3_dir/plugins" && mkdir -p -- "$s3_dir/plugins/s3-fs-hadoop" &&
            cp -- "$s3_dir"/libs/flink-s3-fs-hadoop-*.jar "$s3_dir/plugins/s3-fs-hadoop/" ||
            die "no flink-s3-fs-hadoop jar in $s3_dir/libs"
    fi
    FLINK_PLUGINS=$s3_dir/plugins

    local pyflink_lib
    pyflink_lib=$("$FLINK_PYTHON" -c 'import os, pyflink; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))') ||
        die "cannot import pyflink from $venv"
    jars_not_in "$jars_dir/libs" "$pyflink_lib"
    FLINK_JARS=$JARS_KEPT
    [[ $FLINK_JARS == *flink-sql-connector-kafka* ]] || die "flink-sql-connector-kafka jar missing in $jars_dir/libs"
    [[ $FLINK_JARS == *flink-sql-parquet* ]] || die "flink-sql-parquet jar missing in $jars_dir/libs"
    log "Flink $FLINK_VERSION ready; extra jars: $(tr ',' '\n' <<<"$FLINK_JARS" | xargs -n1 basename | tr '\n' ' ')plugins: $FLINK_PLUGINS"
}
