# A Python virtualenv kept in step with a requirements file, shared by benches/e2e.sh (its
# bench venv) and benches/flink/setup.sh (the Flink venv). Source it; it defines functions only.
#
#   pyvenv_sync VENV REQUIREMENTS WHAT
#       Creates VENV with `python3 -m venv` and installs REQUIREMENTS into it, unless VENV's
#       stamp (VENV/.requirements.sha256) already holds the file's sha256 and its interpreter
#       runs. WHAT names the packages in the log line ("pyspark and pyarrow, ≈ 600 MB").
#       Logs through the caller's `log`; returns 1 (pip's output on stderr) when an install
#       fails, leaving no stamp, so the next run tries again.

pyvenv_sync() {
    local venv=$1 requirements=$2 what=$3 want
    local stamp=$venv/.requirements.sha256
    want=$(sha256sum <"$requirements" | cut -d' ' -f1)
    if [[ -x $venv/bin/python && -f $stamp && $(<"$stamp") == "$want" ]] && "$venv/bin/python" -c '' 2>/dev/null; then
        return 0
    fi
    log "installing $what into $venv (first run only)"
    rm -f -- "$stamp"
    python3 -m venv "$venv" || { echo "python3 -m venv $venv failed (Debian: apt-get install python3-venv)" >&2; return 1; }
    "$venv/bin/pip" install -q --disable-pip-version-check --no-input -r "$requirements" >&2 || return 1
    printf '%s' "$want" >"$stamp"
}
