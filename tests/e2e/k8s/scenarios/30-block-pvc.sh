# Scenario 3 of #19: a block-mode PVC; a pod runs fio with verify on the raw
# device.
kc create namespace "$K8S_NS" >/dev/null 2>&1
k8s_pvc blk-pvc 256Mi Block || k8s_fail "create block PVC"
t0=$(date +%s%N)
k8s_pod blk-fio blk-pvc Block 'fio --name=blk --filename=/dev/xvda --rw=randwrite --bs=4k --iodepth=16 --ioengine=libaio --direct=1 --size=64M --verify=crc32c --verify_fatal=1 --do_verify=1 > /tmp/fio.log 2>&1; rc=$?; grep -E "err=|verify|WRITE:|READ:" /tmp/fio.log; [ $rc = 0 ] && echo FIO-OK' \
  || k8s_fail "create fio pod"
k8s_wait_pod_phase "$K8S_NS" blk-fio Running 300 || k8s_wait_pod_phase "$K8S_NS" blk-fio Succeeded 5 \
  || { k8s_explain "$K8S_NS" blk-fio; k8s_fail "fio pod did not start"; }
echo "measure: block PVC create to pod Running: $(e2e_secs "$t0")s"
k8s_wait_pod_phase "$K8S_NS" blk-fio Succeeded 900 || k8s_check_failed "fio pod did not succeed"
out=$(kc -n "$K8S_NS" logs blk-fio 2>&1)
echo "$out" | grep -E "err=|verify|WRITE:|READ:|FIO-OK" | sed 's/^/  fio: /'
if grep -q FIO-OK <<< "$out" && grep -q 'err= 0' <<< "$out"; then
  k8s_ok "fio randwrite+verify on the raw ublk device: 0 errors"
else
  k8s_check_failed "fio on the block volume failed"
fi
k8s_node "ls -l /dev/ublkb* 2>/dev/null | head -3" | sed 's/^/  node: /'
kc -n "$K8S_NS" delete pod blk-fio --wait=true >/dev/null
kc -n "$K8S_NS" delete pvc blk-pvc --wait=true --timeout=120s >/dev/null || k8s_check_failed "delete block PVC"
k8s_result
