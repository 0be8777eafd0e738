"""Run a fake Proxmox VE (the `fakepve` package) plus a small control API for pvefleet's Rust tests.

The PVE API is TLS with a fresh self-signed certificate; the control API is plain HTTP on the same
loopback address. Once both listen, DIR/ready.json is written and `READY <json>` printed. Usage and
answers: FAKEPVE_NOTES.md beside this file. fakepve is AGPL: it is only imported and subclassed here.
"""

import argparse
import asyncio
import collections
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import signal
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from aiohttp import web
from fakepve import FakePve, PveError, TaskError
from fakepve.server import API, USER as USER_KEY, params
from fakepve.certs import make_cert
from fakepve.lxc import SNAPSHOT_STORAGE, mount_type, parse_mount, parse_size, print_mount, random_mac, split_props, \
    to_base
from fakepve.routing import split_list
from fakepve.storage import STORAGE_ID

DEFAULT_TEMPLATES = ('debian-12-standard_12.7-1_amd64.tar.zst',)
TEMPLATE_SIZE = 126 * 1024 ** 2  # about what the real debian-12 template weighs
# pveam's catalogue (GET /nodes/{node}/aplinfo), as PVE lists it; POST aplinfo downloads one.
APPLIANCES = (
    {'template': 'debian-12-standard_12.7-1_amd64.tar.zst', 'package': 'debian-12-standard', 'os': 'debian-12',
     'version': '12.7-1', 'section': 'system', 'type': 'lxc', 'headline': 'Debian 12 Bookworm (standard)'},
    {'template': 'alpine-3.22-default_20250617_amd64.tar.xz', 'package': 'alpine-3.22-default', 'os': 'alpine-3.22',
     'version': '20250617', 'section': 'system', 'type': 'lxc', 'headline': 'Alpine Linux 3.22 (default)'},
)
# The images the bed's pretend registry has, for oci-registry-pull.
OCI_IMAGES = ('docker.io/library/nginx:1.27', 'docker.io/library/alpine:3.22')

# ------------------------------------------------------------------ backups (vzdump), restore, features

GIB = 1024 ** 3
VZDUMP_LOCKFILE = '/var/run/vzdump.lock'  # PVE's global per-node vzdump lock
# vzdump `compress` -> archive extension after .tar (PVE::VZDump::compressor_info).
COMPRESS_EXT = {'0': '', '1': '.lzo', 'lzo': '.lzo', 'gzip': '.gz', 'zstd': '.zst'}
PRUNE_KEYS = ('keep-all', 'keep-last', 'keep-hourly', 'keep-daily', 'keep-weekly', 'keep-monthly', 'keep-yearly')
# How PVE groups backups per keep option when pruning (PVE::Storage::prune_mark_backup_group), in its order.
PRUNE_IDS = (('keep-last', None), ('keep-hourly', '%H/%d/%m/%Y'), ('keep-daily', '%d/%m/%Y'),
             ('keep-weekly', '%V/%G'), ('keep-monthly', '%m/%Y'), ('keep-yearly', '%Y'))
NOTES_VARIABLES = ('cluster', 'guestname', 'node', 'vmid')
# Not in a backed-up config (PVE::VZDump::LXC::assemble deletes them), nor taken from one on restore.
NOT_BACKED_UP = ('lock', 'snapshots', 'parent', 'pending', 'digest')
# Keys PVE's restore never takes from the backup (PVE::LXC::Create::sanitize_and_merge_config).
NOT_RESTORED = ('digest', 'rootfs', 'snapshots', 'unprivileged', 'parent', 'template', 'lock')
# PVE's volume_has_feature of each storage plugin, for container volumes (raw or subvol):
# feature -> {'current' | 'base' | 'snap': formats that have it}. File-based storages share Plugin.pm's table,
# where a container clone is never possible (clone_image makes qcow2, a container needs raw or subvol).
_ANY = ('raw', 'subvol')
_FILE_FEATURES = {'snapshot': {}, 'clone': {}, 'copy': {'base': ('raw',), 'current': ('raw',)}}
VOLUME_FEATURES = {
    'dir': _FILE_FEATURES, 'nfs': _FILE_FEATURES, 'cifs': _FILE_FEATURES, 'cephfs': _FILE_FEATURES,
    'glusterfs': _FILE_FEATURES,
    'lvm': {'copy': {'base': ('raw',), 'current': ('raw',)}},
    'lvmthin': {'snapshot': {'current': _ANY}, 'clone': {'base': _ANY, 'snap': _ANY},
                'copy': {'base': _ANY, 'current': _ANY, 'snap': _ANY}},
    'zfspool': {'snapshot': {'current': _ANY, 'snap': _ANY}, 'clone': {'base': _ANY},
                'copy': {'base': _ANY, 'current': _ANY}},
    'rbd': {'snapshot': {'current': _ANY, 'snap': _ANY}, 'clone': {'base': _ANY, 'snap': _ANY},
            'copy': {'base': _ANY, 'current': _ANY, 'snap': _ANY}},
    'btrfs': {'snapshot': {'current': _ANY, 'snap': _ANY}, 'clone': {'base': _ANY, 'current': ('raw',),
                                                                     'snap': ('raw',)},
              'copy': {'base': _ANY, 'current': _ANY, 'snap': _ANY}},
}
# Real seconds between the end of a `hamigrate` task and the HA manager acting at time scale 0.
HA_SETTLE = 0.2


class GuestFailed(Exception):
    """One guest's backup failed (PVE logs `ERROR: Backup of VM N failed - ...` and goes on)."""


def pve_size(size):
    """PVE::VZDump::format_size."""
    kb, mb = size / 1024, size / 1024 ** 2
    if kb < 1024:
        return '{0}KB'.format(int(kb))
    if mb < 1024:
        return '{0}MB'.format(int(mb))
    if mb / 1024 < 1024:
        return '{0:.2f}GB'.format(mb / 1024)
    return '{0:.2f}TB'.format(mb / 1024 ** 2)


def pve_duration(secs):
    """PVE::VZDump::format_time."""
    secs = int(secs)
    return '{0:02d}:{1:02d}:{2:02d}'.format(secs // 3600, secs % 3600 // 60, secs % 60)


def pve_now(at=None):
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))


def parse_prune(text):
    """A prune-backups property string as {option: int}, or PVE's 400 naming what is wrong."""
    keep, problems = {}, []
    for part in (p for p in str(text).split(',') if p):
        key, eq, value = part.partition('=')
        if key not in PRUNE_KEYS:
            problems.append('prune-backups.{0}: property is not defined in schema and the schema does not '
                            'allow additional properties'.format(key))
        elif not re.fullmatch(r'\d+', value) and not (key == 'keep-all' and value in ('true', 'false', 'yes', 'no',
                                                                                      'on', 'off')):
            problems.append("prune-backups.{0}: type check ('{1}') failed - got '{2}'".format(
                key, 'boolean' if key == 'keep-all' else 'integer', value))
        else:
            keep[key] = int(value) if value.isdigit() else int(value in ('true', 'yes', 'on'))
    if problems:
        raise PveError(400, 'Parameter verification failed.',
                       {'prune-backups': 'invalid format - format error\n' + '\n'.join(problems) + '\n'})
    return keep


def notes_problems(template):
    """PVE::VZDump's notes-template check: None, or the parameter error's text."""
    if '\n' in template:
        return 'contains a line feed\n'
    problems = ["escape sequence '\\{0}' at char {1}".format(m.group(1), m.end() - 2)
                for m in re.finditer(r'\\(.)', template) if m.group(1) not in ('n', '\\')]
    problems += ["variable '{0}' at char {1}".format(m.group(1), m.end() - len(m.group(1)))
                 for m in re.finditer(r'\{\{([^\s{}]+)\}\}', template) if m.group(1) not in NOTES_VARIABLES]
    return 'found unknown: {0}\n'.format(', '.join(problems)) if problems else None


def expand_notes(template, info):
    """The notes PVE writes: escapes (\\n, \\\\) first, then the {{variables}}."""
    text = re.sub(r'\\(.)', lambda m: '\\' if m.group(1) == '\\' else '\n', template)
    return re.sub(r'\{\{(' + '|'.join(NOTES_VARIABLES) + r')\}\}', lambda m: str(info[m.group(1)]), text)


def pct_conf(config):
    """A container config as /etc/pve/lxc/N.conf (and a backup's etc/vzdump/pct.conf) has it: the description
    as `#` comment lines first (PVE::Tools::encode_text), then `key: value` sorted by key."""
    out = ['#' + urllib.parse.quote(line, safe=''.join(chr(c) for c in range(0x20, 0x7f) if c not in (0x25, 0x3a)))
           for line in str(config.get('description') or '').split('\n') if config.get('description')]
    out += ['{0}: {1}'.format(k, config[k]) for k in sorted(config)
            if k not in ('digest', 'description', 'pending', 'snapshots', 'snapname', 'env', 'lxc')]
    return ''.join(line + '\n' for line in out)


def backup_time(volname):
    """The local time in a standard backup name (vzdump-lxc-101-2026_12_04-16_20_00.tar.zst), or None."""
    stamp = re.search(r'^backup/vzdump-(?:lxc|qemu|openvz)-\d+-(\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d)\.', volname)
    return int(time.mktime(time.strptime(stamp.group(1), '%Y_%m_%d-%H_%M_%S'))) if stamp else None


def backup_mounts(config):
    """rootfs and mpN in PVE's order, as PVE::LXC::Config::get_backup_volumes sees them:
    (key, mount, path, type, included, reason)."""
    keys = ['rootfs'] + sorted((k for k in config if re.fullmatch(r'mp\d+', k)), key=lambda k: int(k[2:]))
    out = []
    for key in keys:
        if key not in config:
            continue
        mount = parse_mount(config[key])
        path = '/' if key == 'rootfs' else mount.get('mp')
        if not mount.get('volume') or not path:
            continue
        kind = mount_type(mount['volume'])
        if key == 'rootfs':
            included, reason = True, 'rootfs'
        elif kind != 'volume':
            included, reason = False, 'not a volume'
        elif str(mount.get('backup', '0')) in ('1', 'true', 'yes', 'on'):
            included, reason = True, 'enabled'
        else:
            included, reason = False, 'disabled'
        out.append((key, mount, path, kind, included, reason))
    return out


def refuse(message, status=400):
    """A control request we refuse: raise what this returns."""
    cls = web.HTTPNotFound if status == 404 else web.HTTPBadRequest
    return cls(text=json.dumps({'ok': False, 'error': message}), content_type='application/json')


def atomic_write(path, text, mode=0o644):
    # Readers (the Rust test, a test sshd) poll these files: never let them see half a file.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
    with os.fdopen(fd, 'w') as out:
        out.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class BedPve(FakePve):
    """FakePve with the hooks the bed needs; each override calls fakepve's own code."""

    def __init__(self, keys_dir=None, **kwargs):
        super().__init__(**kwargs)
        self.keys_dir = keys_dir
        self.delay = 0.0  # real seconds before every API answer (fakepve's own latency is scaled by time_scale)
        # (effect, task type) -> queue: each task of that type takes the next entry of each effect.
        self.effects = collections.defaultdict(collections.deque)
        self.warned = {}        # upid -> number of warnings its task ended with
        self.create_keys = {}   # vmid -> (keys, [files]) between the create request and its task
        self.key_files = {}     # vmid -> files written for it, removed again when it is destroyed
        self.bed_requests = 0       # API requests that got past TLS, for tests of certificate pinning
        self.mem_used = {}          # node -> bytes of memory in use, reported by /nodes/{node}/status
        # PVE seconds a new container's start/stop/shutdown take (fakepve keeps these per container).
        self.ct_defaults = {'start_secs': 0, 'stop_secs': 0, 'shutdown_secs': 0}
        # (method, path) -> {'times': n or None, 'how': '500' | 'drop'}: the request is carried out,
        # then its answer is lost, as when pveproxy times out while the worker runs on.
        self.lost_answers = {}
        self.answers_lost = 0
        # (method, path) -> {'skip': n, 'times': n or None, 'vmid': n, 'set': {...}, 'delete': [...]}: once a
        # matching request (after the first `skip`) is answered, another PVE user edits that container's
        # config (a concurrent edit); `{n}` in a value is the edit's number, so each edit changes something.
        self.edits_after = {}
        self.edits_made = 0
        # (method, schema path template) -> count: what a benchmark reads as "calls per job".
        self.bed_calls = collections.Counter()
        # storage -> checks of the download-url requests whose tasks are about to run (see _download_url).
        self.download_checks = collections.defaultdict(collections.deque)
        self.ct_secs['vzdump'] = 0  # PVE seconds a vzdump takes to write its archive (POST /task-secs "vzdump")
        self.vzdump_gates = {}      # node -> asyncio.Lock: PVE's global /var/run/vzdump.lock, one job per node
        self.restore_plans = {}     # vmid -> what a restore takes from its backup, between request and task
        self.ha_requests = {}       # vmid -> migrate request values, between the request and its hamigrate task
        self.ha_delay_default = self.ha_delay

    def bed_reset(self, time_scale):
        """Back to the launch state: no faults, no delay, nodes online, no task durations. Guests stay."""
        self.time_scale = time_scale
        self.ct_secs.update(dict.fromkeys(self.ct_secs, 0))
        self.ct_defaults.update(dict.fromkeys(self.ct_defaults, 0))
        for ct in self.cts:
            ct.start_secs = ct.stop_secs = ct.shutdown_secs = 0
        self.failures.clear()
        self.lost_answers.clear()
        self.edits_after.clear()
        self.flaky_network()
        self.effects.clear()
        self.delay = 0.0
        self.ha_delay = self.ha_delay_default
        for node in self.nodes:
            self.set_node_offline(node, False)

    def _record(self, request, body):
        super()._record(request, body)
        match = self.resolve(request, API)
        self.bed_calls[request.method, match.template if match else request.path] += 1

    async def _middleware(self, request, handler):
        self.bed_requests += 1  # lets a test prove a client refused the TLS handshake before any request
        if self.delay:
            await asyncio.sleep(self.delay)
        response = await super()._middleware(request, handler)
        await self._edit_after(request, response)
        how = self._lose_answer(request, response)
        if how == 'drop':
            request.transport.close()
            raise ConnectionResetError('fakepve_launcher: answer lost (connection dropped after acting)')
        if how == '500':
            return web.json_response({'data': None, 'message': 'fakepve_launcher: answer lost after acting\n'},
                                     status=500)
        return response
    _middleware.__middleware_version__ = 1  # what @web.middleware marks; keeps aiohttp treating it as new-style

    async def _lxc_create(self, user, v):
        # The validated request values are only visible here; the task (below) is where PVE writes the keys.
        vmid = int(v['vmid'])
        if v.get('restore'):
            v = self._restore_values(user, v)  # a backup the launcher made: its config under the request's
        if self.keys_dir and v.get('ssh-public-keys'):
            files = ['vmid-{0}'.format(vmid)]
            for key in sorted(k for k in v if re.fullmatch(r'net\d+', k)):
                ip = re.search(r'(?:^|,)ip=([^,/]+)', str(v[key]))
                if ip and ip.group(1) not in ('dhcp', 'manual'):
                    files.append(ip.group(1))
            self.create_keys[vmid] = (str(v['ssh-public-keys']), files)
        try:
            upid = await super()._lxc_create(user, v)
        finally:
            self.create_keys.pop(vmid, None)  # refused before a task was started
            self.restore_plans.pop(vmid, None)
        ct = self.ct(vmid)  # None when its create task has already failed
        if ct is not None:
            vars(ct).update(self.ct_defaults)
        return upid

    def _restore_values(self, user, v):
        """The create values of a restore (`restore=1`, `ostemplate` a backup volume), as PVE merges them.

        fakepve's own restore ignores what is in the backup. PVE (API2/LXC.pm create_vm and
        LXC/Create.pm) recovers the backed-up config and puts it under the request's parameters: every
        key the request lacks comes from the backup (not rootfs/mpN/unusedN, template, unprivileged,
        parent, digest, lock); with `unique` every netN of the backup gets a new MAC *and replaces a netN
        the request gave*; `unprivileged` comes from the backup unless given. Without rootfs/mpN in the
        request, every volume mount point of the backup is allocated anew on `storage` (default `local`)
        at its backed-up size, bind and device mount points are put back after the restore (root@pam
        only). fakepve's schema checks have run on the request; what is taken from the backup is a
        valid config already. What has to happen inside the task (PVE's errors there, ostype and arch
        from the backup, the template flag) goes in restore_plans[vmid] for task() below.
        """
        volid = str(v.get('ostemplate', ''))
        sid, colon, volname = volid.partition(':')
        if not colon or sid not in self.storages or not volname.startswith('backup/'):
            return v  # fakepve's _check_template refuses these with PVE's words, before the task
        vmid, node = int(v['vmid']), v['node']
        existing = self.ct(vmid)
        plan = {'volid': volid, 'path': self._volume_path(sid, volname, 'backup'), 'delayed': {}, 'old': None}
        if v.get('force') and existing is not None and existing.node == node:
            plan['old'], plan['old_pool'] = existing, existing.pool  # put back if the restore fails early
        self.restore_plans[vmid] = plan
        vol = self._volumes(sid).get(volname)
        if vol is None:
            plan['error'] = "can't find file '{0}'".format(volid)  # PVE::Storage::abs_filesystem_path
            return v
        if '_config' not in vol:  # a backup file the launcher did not write
            plan['error'] = 'ERROR: archive contains no configuration file'
            return v
        old = vol['_config']
        new = dict(v)
        for key, value in old.items():
            if key in NOT_RESTORED or re.fullmatch(r'(mp|unused)\d+', key):
                continue
            if v.get('unique') and re.fullmatch(r'net\d+', key):
                first, props = split_props(value)
                props['hwaddr'] = random_mac()
                new[key] = ','.join('{0}={1}'.format(k, x) for k, x in props.items())
                continue
            if new.get(key) is None:
                new[key] = value
        if v.get('unprivileged') is None and old.get('unprivileged') is not None:
            new['unprivileged'] = old['unprivileged']
        if not any(k == 'rootfs' or re.fullmatch(r'mp\d+', k) for k in v):
            storage = v.get('storage') or 'local'
            for key, mount, _path, kind, _included, _reason in backup_mounts(old):
                if kind == 'volume':
                    size = parse_size(mount.pop('size', ''))
                    if not size:
                        plan['error'] = 'unable to detect disk size - please specify {0} (size)'.format(key)
                        return v
                    gib = size / GIB
                    mount['volume'] = '{0}:{1}'.format(storage, int(gib) if gib == int(gib) else gib)
                    new[key] = print_mount(mount, key == 'rootfs')
                elif key == 'rootfs':
                    plan['error'] = ('restoring rootfs to {0} mount is only possible by specifying -rootfs '
                                     'manually!'.format(kind))
                    return v
                elif user != 'root@pam':
                    plan['error'] = "restoring '{0}' to {1} mount is only possible for root".format(key, kind)
                    return v
                else:
                    plan['delayed'][key] = old[key]
        plan.update(ostype=new.get('ostype'), arch=new.get('arch'), template=old.get('template'))
        return new

    def _restore_task_start(self, vmid, plan, log):
        """The start of a vzrestore task: PVE's lines, and its early errors (the old container stays)."""
        log.append("recovering backed-up configuration from '{0}'".format(plan['volid']))
        if plan.get('error'):
            ct = self.ct(vmid)
            if ct is not None and ct.lock == 'create':
                self._drop(ct)
            old = plan['old']
            if old is not None and self.ct(vmid) is None:
                self.cts.append(old)  # PVE fails before it touches the old container: it stays as it was
                if plan.get('old_pool'):
                    self._pool_join(plan['old_pool'], vmid)
            raise TaskError('unable to restore CT {0} - {1}'.format(vmid, plan['error']))
        log.append("restoring '{0}' now..".format(plan['volid']))
        log.append("extracting archive '{0}'".format(plan['path']))

    def _restore_task_end(self, vmid, plan, log):
        """After fakepve's restore: what PVE takes from the backup that fakepve sets its own way."""
        log.append('merging backed-up and given configuration..')
        ct = self.ct(vmid)
        if ct is None:
            return
        for key in ('ostype', 'arch'):  # fakepve derives both from the ostemplate's file name
            if plan.get(key):
                ct.config[key] = plan[key]
        ct.config.update(plan['delayed'])
        if plan.get('template'):  # PVE converts a restored template back into one
            log.append('Convert restored container to template...')
            for key, mount in ct.volumes():
                mount['volume'] = to_base(mount['volume'])
                ct.config[key] = print_mount(mount, key == 'rootfs')
            ct.config['template'] = 1

    # -------------------------------------------------------------- HA migration

    async def _lxc_migrate(self, user, v):
        # PVE's `hamigrate` task only queues `ha-manager migrate` and ends; fakepve's waits and moves inside
        # it. fakepve's checks run as they are; task() swaps the body of the hamigrate task it starts.
        ct = self.ct(int(v['vmid']))
        if ct is None or not ct.ha_managed or ct.node != v['node']:
            return await super()._lxc_migrate(user, v)
        self.ha_requests[ct.vmid] = dict(v)
        try:
            return await super()._lxc_migrate(user, v)
        finally:
            self.ha_requests.pop(ct.vmid, None)  # refused before the task

    def _ha_request_body(self, vmid, request):
        async def body():
            asyncio.ensure_future(self._ha_migrate_later(vmid, request))
        return body

    async def _ha_migrate_later(self, vmid, request):
        """What the HA stack does with a queued migration, ha_delay later, on the source node as root@pam:
        the LRM shuts a running container down (`vzshutdown`, timeout 60, forceStop), migrates it
        (`vzmigrate`, PVE::HA::Resources::PVECT::migrate), and the target's LRM starts it again when its
        HA state is `started` (`vzstart` on the target)."""
        if self.time_scale:
            await self.pause(self.ha_delay)
        else:
            await asyncio.sleep(HA_SETTLE)  # still after the hamigrate task has ended
        source, target = request['node'], request['target']
        ct = self.ct(vmid)
        if ct is None or ct.node != source or not ct.ha_managed:
            return
        if not self.nodes.get(target, {}).get('online', True):
            logging.warning('HA migration of CT %s to %s not done: the node is offline', vmid, target)
            return
        try:
            if ct.status == 'running':
                await self._as_lrm(ct, self._lxc_shutdown,
                                   {'node': source, 'vmid': vmid, 'timeout': 60, 'forceStop': 1})
                if ct.status == 'running':
                    return
            await self._as_lrm(ct, super()._lxc_migrate, {'node': source, 'vmid': vmid, 'target': target,
                                                          'online': 0})
            if ct.node == target and ct.ha_state == 'started' and ct.status != 'running':
                await self._as_lrm(ct, self._lxc_start, {'node': target, 'vmid': vmid})
        except PveError as e:
            logging.warning('HA migration of CT %s to %s failed: %s', vmid, target, e.message)

    async def _as_lrm(self, ct, action, values):
        """A fakepve container action as the HA local resource manager runs it (root@pam, the container
        not treated as HA-managed), until its task has ended; returns the task's exit status."""
        state, ct.ha_state = ct.ha_state, None
        try:
            upid = await action('root@pam', values)
        finally:
            ct.ha_state = state
        while self.tasks[upid]['status'] == 'running':
            await asyncio.sleep(0.01)
        return self.tasks[upid]['exitstatus']

    async def _download_url(self, request):
        # fakepve stores a file of the size asked without fetching anything. PVE fetches the URL and,
        # given a checksum, compares it before it keeps the file: so does this, for loopback URLs only
        # (the tests serve their templates themselves), inside the task as PVE does.
        p = await params(request)  # aiohttp keeps the body: fakepve reads it again below
        url = str(p.get('url', ''))
        host = urllib.parse.urlsplit(url).hostname or ''
        if not re.fullmatch(r'127(\.\d{1,3}){3}|localhost', host):
            raise PveError(500, "fakepve_launcher: only loopback URLs are fetched, not '{0}'".format(url))
        algorithm, expected = p.get('checksum-algorithm'), p.get('checksum')

        async def check():
            data = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
            if algorithm:
                got = hashlib.new(algorithm, data).hexdigest()
                if got != str(expected).lower():
                    # PVE::Tools::download_file_from_url's words; the part file is removed, nothing kept.
                    raise TaskError("checksum mismatch: got '{0}' != expect '{1}'".format(got, expected))
            return len(data)
        # The stored file is as long as what was fetched (fakepve's own stores `size`, 1 MiB by default).
        self.download_checks[request.match_info['storage']].append((check, str(p.get('filename', ''))))
        try:
            return await super()._download_url(request)
        except Exception:
            self.download_checks[request.match_info['storage']].pop()
            raise

    def _routes_bedtemplates(self):
        return [('GET', '/nodes/{node}/aplinfo', self._aplinfo_list),
                ('POST', '/nodes/{node}/aplinfo', self._aplinfo_download),
                ('POST', '/nodes/{node}/storage/{storage}/oci-registry-pull', self._oci_pull)]

    async def _aplinfo_list(self, v, user):
        return [dict(a, location='http://download.proxmox.com/images/system/' + a['template']) for a in APPLIANCES]

    def _vztmpl_store(self, name, node):
        store = self._active_store(name, node)
        if 'vztmpl' not in str(store.get('content', '')).split(','):
            raise PveError(500, "storage '{0}' does not support vztmpl content".format(name))
        return store

    async def _aplinfo_download(self, v, user):
        node, storage, template = v['node'], v['storage'], v['template']
        self._vztmpl_store(storage, node)
        if template not in [a['template'] for a in APPLIANCES]:
            raise PveError(400, 'Parameter verification failed.', {'template': 'no such template'})

        async def body():
            self.store_file(storage, template, TEMPLATE_SIZE, 'vztmpl')
        return await self.task(node, 'download', template, user, body,
                               log=['downloading http://download.proxmox.com/images/system/' + template])

    async def _oci_pull(self, v, user):
        node, storage, reference = v['node'], v['storage'], v['reference']
        self._vztmpl_store(storage, node)
        name, tag = reference.rsplit(':', 1)
        filename = v.get('filename') or '{0}_{1}.tar'.format(name.rsplit('/', 1)[-1], tag)

        async def body():
            if reference not in OCI_IMAGES:
                raise TaskError('failed to pull {0}: manifest unknown'.format(reference))
            self.store_file(storage, filename, 48 * 1024 ** 2, 'vztmpl')
        return await self.task(node, 'download', filename, user, body,
                               log=['pulling {0} to {1}:vztmpl/{2}'.format(reference, storage, filename)])

    # ------------------------------------------------------- backups: feature, vzdump, extractconfig

    def _routes_bedbackup(self):
        return [('GET', '/nodes/{node}/lxc/{vmid}/feature', self._bed_feature),
                ('POST', '/nodes/{node}/vzdump', self._bed_vzdump),
                ('GET', '/nodes/{node}/vzdump/extractconfig', self._bed_extractconfig)]

    def _item(self, name, volname, vol):
        # PVE lists a backup's guest type as `subtype`; fakepve's listing copies only the keys it knows
        # (so a backup's private `_config` never shows).
        item = super()._item(name, volname, vol)
        if vol.get('subtype'):
            item['subtype'] = vol['subtype']
        return item

    async def _bed_feature(self, v, user):
        """API2/LXC.pm vm_feature: PVE::LXC::Config::has_feature over rootfs and the mpN of the config
        (or of snapshot `snapname`), each volume asked of its storage plugin's volume_has_feature."""
        ct = self._find_ct(v['node'], v['vmid'])
        config, snapname = ct.config, v.get('snapname')
        if snapname:
            if snapname not in ct.snapshots:
                raise PveError(500, "snapshot '{0}' does not exist".format(snapname))
            config = ct.snapshots[snapname]
        ok = all(self._volume_has_feature(v['feature'], mount['volume'], snapname)
                 for key, mount in ct.volumes(config) if not key.startswith('unused'))
        return {'hasFeature': 1 if ok else 0}

    def _volume_has_feature(self, feature, volid, snapname=None):
        sid, _, volname = volid.partition(':')
        store = self.storages.get(sid)
        if store is None:
            raise PveError(500, "storage '{0}' does not exist".format(sid))
        kind = store.get('type', 'dir')
        if feature == 'snapshot' and not snapname:
            return kind in SNAPSHOT_STORAGE  # the rule fakepve's own snapshot task applies
        key = 'snap' if snapname else 'base' if re.match(r'base(vol)?-', volname.rsplit('/', 1)[-1]) else 'current'
        fmt = 'subvol' if 'subvol' in volname else 'qcow2' if volname.endswith('.qcow2') else 'raw'
        return fmt in VOLUME_FEATURES.get(kind, {}).get(feature, {}).get(key, ())

    async def _bed_vzdump(self, v, user):
        """POST /nodes/{node}/vzdump for one container (API2/VZDump.pm, then PVE::VZDump in the task)."""
        node = v['node']
        if v.get('stdout'):
            raise PveError(400, 'Parameter verification failed.',
                           {'stdout': 'option is only allowed on the command line interface.'})
        for opt in ('all', 'exclude', 'pool'):  # verify_vzdump_parameters
            if v.get(opt) and v.get('vmid'):
                raise PveError(400, 'Parameter verification failed.', {opt: "option conflicts with option 'vmid'"})
        keep = parse_prune(v['prune-backups']) if v.get('prune-backups') is not None else None
        problem = notes_problems(v['notes-template']) if v.get('notes-template') else None
        if problem:
            raise PveError(400, 'Parameter verification failed.', {'notes-template': problem})
        if not (v.get('vmid') or v.get('all') or v.get('stop') or v.get('pool')):
            raise PveError(400, 'Parameter verification failed.', {'vmid': 'property is missing'})
        for opt in ('all', 'pool', 'exclude', 'stop', 'dumpdir'):
            if v.get(opt):
                raise PveError(501, "fakepve_launcher: vzdump with '{0}' is not modelled; give one vmid "
                                    "(and a storage)".format(opt))
        vmids = sorted(set(int(x) for x in split_list(v['vmid']) if int(x)))
        if len(vmids) != 1:
            raise PveError(501, "fakepve_launcher: vzdump of more than one guest ('{0}') is not modelled; "
                                "one vmid per request".format(v['vmid']))
        vmid = vmids[0]
        storage = v.get('storage') or 'local'  # PVE::VZDump::get_storage_param (no /etc/vzdump.conf)
        if keep is not None and user.split('!')[0] != 'root@pam':
            self.require(user, '/storage/' + storage, 'Datastore.Allocate')
        guest = self.guest(vmid)
        if guest is not None and guest.node != node:
            return 'OK'  # PVE: "silent exit if specified VMs run on other nodes" - no task, no UPID
        if self.vm(vmid) is not None:
            raise PveError(501, 'fakepve_launcher: vzdump of a QEMU VM ({0}) is not modelled'.format(vmid))
        self.require(user, '/storage/' + storage, 'Datastore.AllocateSpace')
        words = ['vzdump', str(vmid)]  # PVE::VZDump::Common::command_line (PVE's order is a hash's)
        for key in sorted(v):
            value = ','.join('{0}={1}'.format(k, keep[k]) for k in sorted(keep)) if key == 'prune-backups' \
                else v[key]
            if key in ('vmid', 'id', 'starttime', 'dow', 'stdout', 'enabled', 'job-id') or value in (None, ''):
                continue
            for one in (value if isinstance(value, list) else [value]):
                words += ['--' + key, shlex.quote(str(one))]
        index = len(self.tasklog)  # fakepve appends the task's record here before it runs the body

        async def body():
            await self._vzdump_job(index, node, vmid, storage, keep, v, user, ' '.join(words))
        return await self.task(node, 'vzdump', vmid, user, body, lock=False)

    async def _vzdump_job(self, index, node, vmid, storage, keep, v, user, cmdline):
        def say(text, level='INFO'):
            self.tasklog[index]['log'].append('{0}: {1}'.format(level, text))
        # PVE::VZDump->new: the storage, before anything else (errors joined, as PVE's task status joins lines).
        store, errors = self.storages.get(storage), []
        if store is None:
            why = "storage '{0}' does not exist".format(storage)
            errors = ["could not activate storage '{0}': {1}".format(storage, why),
                      "could not get storage information for '{0}': {1}".format(storage, why)]
        else:
            try:
                self._active_store(storage, node)
            except PveError as e:
                errors.append("could not activate storage '{0}': {1}".format(storage, e.message))
            if 'backup' not in split_list(store.get('content')):
                errors.append("could not get storage information for '{0}': can't use storage '{0}' for backups "
                              "- wrong content type".format(storage))
        if errors:
            raise TaskError(' '.join(errors))
        if keep is None:
            keep = parse_prune(store['prune-backups']) if store.get('prune-backups') else {'keep-all': 1}
        remove = 0 if keep.get('keep-all') else 1 if v.get('remove') is None else v['remove']
        # getlock: one vzdump per node; the next waits up to `lockwait` minutes.
        gate = self.vzdump_gates.setdefault(node, asyncio.Lock())
        if gate.locked():
            lockwait = 180 if v.get('lockwait') is None else v['lockwait']
            if not lockwait:
                message = "can't acquire lock '{0}' (wait = 0)".format(VZDUMP_LOCKFILE)
                say(message, 'ERROR')
                raise TaskError(message)
            say('trying to get global lock - waiting...')
            try:
                await asyncio.wait_for(gate.acquire(), lockwait * 60 * self.time_scale or None)
            except asyncio.TimeoutError:
                message = "can't acquire lock '{0}' - got timeout".format(VZDUMP_LOCKFILE)
                say(message, 'ERROR')
                raise TaskError(message) from None
            say('got global lock')
        else:
            await gate.acquire()
        try:
            say('starting new backup job: ' + cmdline)
            if self.ct(vmid) is not None:
                self.require(user, '/vms/{0}'.format(vmid), 'VM.Backup')  # PVE dies here: the whole job fails
            ok = await self._vzdump_guest(say, index, node, vmid, storage, store, keep, remove, v, user)
            say('Backup job finished successfully' if ok else 'Backup job finished with errors')
            if not ok:
                raise TaskError('job errors')
        except PveError as e:
            raise TaskError(e.message) from e
        finally:
            gate.release()

    async def _vzdump_guest(self, say, index, node, vmid, storage, store, keep, remove, v, user):
        """PVE::VZDump::exec_backup_task for a container, with PVE::VZDump::LXC's steps and log lines.
        Returns True if the guest's backup is done."""
        clock = [0.0]  # PVE seconds this guest's backup has taken

        async def pause(secs):
            clock[0] += secs
            await self.pause(secs)
        ct = self.ct(vmid)
        mode = v.get('mode') or 'snapshot'
        done = {'locked': False, 'snapshot': None, 'restart': False, 'stopped_at': None}
        error = None
        try:
            if ct is None:
                raise GuestFailed("unable to find VM '{0}'".format(vmid))
            if mode == 'stop' and ct.ha_state == 'started':
                raise GuestFailed('Cannot execute a backup with stop mode on a HA managed and enabled Service. '
                                  'Use snapshot mode or disable the Service.')
            backup_time = int(time.time())
            self._vzdump_limits(vmid, storage, store, keep, remove, v, user)
            say('Starting Backup of VM {0} (lxc)'.format(vmid))
            say('Backup started at ' + pve_now())
            running = ct.status == 'running'
            say('status = ' + ('running' if running else 'stopped'))
            await self._vzdump_lock(ct, self.tasklog[index]['upid'])  # lock_vm: set_lock 'backup'
            done['locked'] = True
            mode = mode if running else 'stop'
            mounts = backup_mounts(ct.config)
            included = [(key, mount) for key, mount, _p, kind, inc, _r in mounts if inc and kind == 'volume']

            def prepare():
                if ct.config.get('hostname'):
                    say('CT Name: {0}'.format(ct.config['hostname']))
                for key, _mount, path, kind, inc, reason in mounts:
                    say("including mount point {0} ('{1}') in backup".format(key, path) if inc else
                        "excluding {0} mount point {1} ('{2}') from backup ({3})".format(kind, key, path, reason))
            if mode == 'snapshot':
                prepare()
                kinds = []
                for _key, mount in included:
                    sid = mount['volume'].split(':')[0]
                    if sid not in self.storages:
                        raise GuestFailed("storage '{0}' does not exist".format(sid))
                    kinds.append(self.storages[sid].get('type', 'dir'))
                if all(kind in SNAPSHOT_STORAGE for kind in kinds):
                    if 'vzdump' in ct.snapshots:
                        say('found old vzdump snapshot (force removal)')
                        self._vzdump_snapshot_remove(ct)
                else:
                    say('mode failure - some volumes do not support snapshots')
                    say("trying 'suspend' mode instead")
                    mode = 'suspend'
            say('backup mode: ' + mode)
            if v.get('bwlimit'):
                say('bandwidth limit: {0} KiB/s'.format(v['bwlimit']))
            say('ionice priority: {0}'.format(7 if v.get('ionice') is None else v['ionice']))
            volname, ctime = self._vzdump_name(storage, vmid, backup_time, v.get('compress'))
            path = self._volume_path(storage, volname, 'backup')
            size = max(sum(parse_size(m.get('size', '')) or 4 * GIB for _k, m in included) // 64, 1024 ** 2)
            if mode == 'stop':
                prepare()
                if running:
                    say('stopping virtual guest')
                    done['stopped_at'], done['restart'] = clock[0], True
                    timeout = (10 if v.get('stopwait') is None else v['stopwait']) * 60
                    clock[0] += min(ct.shutdown_secs, timeout)
                    await self._ct_powerdown(ct, timeout, True)  # lxc-stop --timeout: killed after it
            elif mode == 'suspend':
                prepare()
                dumpdir = os.path.dirname(path)
                tmpdir = os.path.join(dumpdir, os.path.basename(path).split('.tar')[0] + '.tmp')
                if store.get('type') in ('nfs', 'cifs', 'cephfs', 'glusterfs'):
                    tmpdir = '/var/tmp/vzdumptmp{0}_{1}'.format(self.tasklog[index]['pid'], vmid)
                    say("filesystem type on dumpdir is '{0}' -using {1} for temporary files".format(
                        {'cephfs': 'ceph', 'glusterfs': 'fuse.glusterfs'}.get(store['type'], store['type']), tmpdir))
                source = '/proc/{0}/root/'.format(ct.pid or 0)
                say('starting first sync {0} to {1}'.format(source, tmpdir))
                say('first sync finished - transferred {0:.2f}G bytes in 0s'.format(size * 4 / GIB))
                say('suspending guest')
                say('starting final sync {0} to {1}'.format(source, tmpdir))
                say('final sync finished - transferred 0 bytes in 0s')
                say('resuming guest')
                say('guest is online again after <1 seconds')
            else:
                if len(included) > 1:
                    say('suspend vm to make snapshot')
                say("create storage snapshot 'vzdump'")
                done['snapshot'] = self._vzdump_snapshot_create(ct)
                if len(included) > 1:
                    say('resume vm')
                    say('guest is online again after <1 seconds')
            say("creating vzdump archive '{0}'".format(path))
            await pause(self.ct_secs['vzdump'])
            if size > store.get('avail', float('inf')):
                raise GuestFailed("unable to write to storage '{0}': No space left on device".format(storage))
            vol = {'content': 'backup', 'format': volname.split('.', 1)[1], 'size': size, 'ctime': ctime,
                   'vmid': vmid, 'subtype': 'lxc',
                   '_config': {k: x for k, x in ct.config.items() if k not in NOT_BACKED_UP}}
            store.setdefault('volumes', {})[volname] = vol
            if 'avail' in store:
                store['avail'] -= size
            say('archive file size: ' + pve_size(size))
            if v.get('notes-template'):
                say('adding notes to backup')
                vol['notes'] = expand_notes(v['notes-template'], {
                    'cluster': self.cluster_name, 'guestname': ct.config.get('hostname') or 'CT{0}'.format(vmid),
                    'node': node, 'vmid': vmid})
            if v.get('protected'):
                say('marking backup as protected')
                vol['protected'] = True
            if remove:
                say('prune older backups with retention: ' +
                    ', '.join('{0}={1}'.format(k, keep[k]) for k in sorted(keep)))
                pruned = self._vzdump_prune(storage, vmid, keep, say)
                say('pruned {0} backup(s){1}'.format(pruned, ' not covered by keep-retention policy' * bool(pruned)))
        except (GuestFailed, TaskError, PveError) as e:
            error = str(e)
        # cleanup, as PVE does it after the backup (and after a failure)
        if done['locked'] and ct.lock == 'backup':
            ct.lock = None
        if done['snapshot'] is not None:
            say("cleanup temporary 'vzdump' snapshot")
            self._vzdump_snapshot_remove(ct)
        if done['restart'] and ct.status != 'running':
            say('restarting vm')
            try:
                clock[0] += ct.start_secs
                await self._start_steps(ct, user)
                online = clock[0] - done['stopped_at']
                say('guest is online again after {0} seconds'.format(int(online) if online >= 1 else '<1'))
            except TaskError as e:
                self.tasklog[index]['log'].append(str(e))  # PVE only warns; the backup still counts
        if error is not None:
            say('Backup of VM {0} failed - {1}'.format(vmid, error), 'ERROR')
            say('Failed at ' + pve_now())
            return False
        say('Finished Backup of VM {0} ({1})'.format(vmid, pve_duration(clock[0])))
        say('Backup finished at ' + pve_now())
        return True

    def _vzdump_limits(self, vmid, storage, store, keep, remove, v, user):
        """The checks PVE makes before a guest's backup: max protected backups, and the keep limit when
        nothing is pruned (remove=0)."""
        limit = 0 if keep.get('keep-all') else sum(keep.values())
        if not ((limit and not remove) or v.get('protected')):
            return
        backups = [vol for _name, vol in self._vzdump_backups(storage, vmid)]
        protected = sum(1 for vol in backups if vol.get('protected'))
        if v.get('protected'):
            most = store.get('max-protected-backups')
            if most is None:
                most = -1 if self.allowed(user, '/storage/' + storage, 'Datastore.Allocate') else 5
            if most > -1 and protected >= int(most):
                raise GuestFailed('The number of protected backups per guest is limited to {0} on storage '
                                  "'{1}'".format(most, storage))
        elif len(backups) - protected >= limit:
            raise GuestFailed('There is a max backup limit of {0} enforced by the target storage or the vzdump '
                              'parameters. Either increase the limit or delete old backups.'.format(limit))

    def _vzdump_backups(self, storage, vmid):
        """(volname, volume) of the container's backups on the storage (named vzdump-lxc-<vmid>-...)."""
        prefix = 'backup/vzdump-lxc-{0}-'.format(vmid)
        return sorted((name, vol) for name, vol in self._volumes(storage).items()
                      if name.startswith(prefix) and vol.get('content') == 'backup')

    def _vzdump_name(self, storage, vmid, when, compress):
        """The archive name (and its time) of the backup started at `when`: PVE names it by the second, so
        if the container already has a backup from that second or later, the second after the newest one
        (names, and so what prune sees as the order, only ever go forward)."""
        ext = '.tar' + COMPRESS_EXT.get(str(compress or '0'), '')
        for name, _vol in self._vzdump_backups(storage, vmid):
            if backup_time(name) is not None:
                when = max(when, backup_time(name) + 1)
        return 'backup/vzdump-lxc-{0}-{1}{2}'.format(
            vmid, time.strftime('%Y_%m_%d-%H_%M_%S', time.localtime(when)), ext), when

    async def _vzdump_lock(self, ct, holder):
        """PVE::LXC::Config->set_lock($vmid, 'backup'): under the config file lock, refused if locked."""
        try:
            await self.acquire(ct, holder)
        except TaskError as e:
            raise GuestFailed(str(e)) from e
        try:
            if ct.lock:
                raise GuestFailed('CT is locked ({0})'.format(ct.lock))
            ct.lock = 'backup'
        finally:
            self.release(ct, holder)

    @staticmethod
    def _vzdump_snapshot_create(ct):
        # snapshot_create($vmid, 'vzdump', 0, "vzdump backup snapshot"): the config copied (its parent too),
        # then the container's parent is the new snapshot.
        snap = {k: x for k, x in ct.config.items()
                if k not in ('lock', 'description', 'digest') and not k.startswith('unused')}
        snap.update(description='vzdump backup snapshot', snaptime=int(time.time()))
        ct.snapshots['vzdump'] = snap
        ct.config['parent'] = 'vzdump'
        return snap

    @staticmethod
    def _vzdump_snapshot_remove(ct):
        snap = ct.snapshots.pop('vzdump', None)
        if snap is None:
            return
        for other in list(ct.snapshots.values()) + [ct.config]:
            if other.get('parent') == 'vzdump':
                if snap.get('parent'):
                    other['parent'] = snap['parent']
                else:
                    other.pop('parent')

    def _vzdump_prune(self, storage, vmid, keep, say):
        """PVE::Storage::prune_backups for the container's backups: protected ones are never counted nor
        removed; returns how many were removed."""
        entries = []
        for name, vol in self._vzdump_backups(storage, vmid):
            if backup_time(name) is None:
                continue  # not PVE's standard name: 'renamed', kept
            entries.append({'name': name, 'vol': vol, 'ctime': backup_time(name),
                            'mark': 'protected' if vol.get('protected') else None})
        positive = [k for k in keep if k != 'keep-all' and keep[k] > 0]
        if keep.get('keep-all') or not positive:
            return 0
        entries.sort(key=lambda e: -e['ctime'])
        for option, pattern in PRUNE_IDS:
            count = keep.get(option)
            if not count:
                continue

            def ident(entry, pattern=pattern):
                return entry['ctime'] if pattern is None else time.strftime(pattern, time.localtime(entry['ctime']))
            already = {ident(e) for e in entries if e['mark'] == 'keep'}
            newly = set()
            for entry in entries:
                if entry['mark'] is not None or ident(entry) in already:
                    continue
                if ident(entry) not in newly:
                    if len(newly) >= count:
                        break
                    newly.add(ident(entry))
                    entry['mark'] = 'keep'
                else:
                    entry['mark'] = 'remove'
        removed = 0
        store = self.storages[storage]
        for entry in sorted(entries, key=lambda e: e['name']):
            if entry['mark'] not in (None, 'remove'):
                continue
            say("removing backup '{0}:{1}'".format(storage, entry['name']))
            store.get('volumes', {}).pop(entry['name'], None)
            if 'avail' in store:
                store['avail'] += int(entry['vol'].get('size') or 0)
            removed += 1
        return removed

    async def _bed_extractconfig(self, v, user):
        """GET /nodes/{node}/vzdump/extractconfig: the pct.conf in the archive, as text."""
        volume = str(v['volume'])
        found = STORAGE_ID.match(volume)
        if not found:
            if user != 'root@pam':
                raise PveError(500, 'Only root can pass arbitrary filesystem paths.')
            raise PveError(500, "can't find file '{0}'".format(volume))
        sid, volname = found.group(1), found.group(2)
        store = self._store(sid)
        vtype, owner, _fmt = self._parse_volname(store, volname)
        if vtype != 'backup':
            raise PveError(500, "unable to use volume {0} - content type needs to be 'backup'".format(volume))
        self._check_access(user, sid, vtype, owner, volume)
        if owner is not None:
            self.require(user, '/vms/{0}'.format(owner), 'VM.Backup')
        self._active_store(sid, v['node'])
        vol = self._volumes(sid).get(volname)
        if vol is None:
            raise PveError(500, "can't find file '{0}'".format(volume))
        if '_config' not in vol:
            raise PveError(500, 'ERROR: archive contains no configuration file')
        return pct_conf(vol['_config'])

    async def _edit_after(self, request, response):
        """Another user's config edit, made once this request has its answer (an /edit-after rule).

        The edit goes through fakepve's own config update (pending and hotplug rules, a new digest), as a
        `PUT …/config` by root@pam would, so the client's next write with the digest it read is refused.
        """
        if response.status >= 400:
            return
        for key, rule in list(self.edits_after.items()):
            if request.method != key[0] or not self._failure_matches(request, None, key[1]):
                continue
            if rule['skip'] > 0:
                rule['skip'] -= 1
                continue
            if rule['times'] is not None:
                rule['times'] -= 1
                if rule['times'] <= 0:
                    del self.edits_after[key]
            ct = self.ct(rule['vmid'])
            if ct is not None:
                n = str(self.edits_made + 1)
                values = {k: v.replace('{n}', n) for k, v in rule['set'].items()}
                await self._update_config(ct, 'root@pam', values, list(rule['delete']), [])
                self.edits_made += 1

    def _lose_answer(self, request, response):
        """How this request's answer is lost ('500', 'drop'), if a /lose-answer rule matches it.

        Only answers that report success are lost: the work was done, the client never hears it.
        """
        if response.status >= 400:
            return None
        for key, rule in list(self.lost_answers.items()):
            if request.method != key[0] or not self._failure_matches(request, None, key[1]):
                continue
            if rule['times'] is not None:
                rule['times'] -= 1
                if rule['times'] <= 0:
                    del self.lost_answers[key]
            self.answers_lost += 1
            return rule['how']
        return None

    def _routes_bed(self):
        # fakepve's generic answer for node status is all zeros; give the figures its /nodes list shows.
        return [('GET', '/nodes/{node}/status', self._bed_node_status),
                ('GET', '/nodes/{node}/network', self._bed_network)]

    async def _bed_network(self, v, user):
        # fakepve's interfaces (vmbr0 on eno1), and a VLAN-aware bridge that carries VLANs 2-100 only.
        ifaces = [{'iface': 'vmbr0', 'type': 'bridge', 'method': 'static', 'method6': 'manual', 'families': ['inet'],
                   'priority': 3, 'active': 1, 'autostart': 1, 'exists': 1, 'address': '192.0.2.11',
                   'netmask': '255.255.255.0', 'cidr': '192.0.2.11/24', 'gateway': '192.0.2.1',
                   'bridge_ports': 'eno1', 'bridge_stp': 'off', 'bridge_fd': '0'},
                  {'iface': 'vmbr1', 'type': 'bridge', 'method': 'manual', 'method6': 'manual', 'families': ['inet'],
                   'priority': 4, 'active': 1, 'autostart': 1, 'exists': 1, 'bridge_ports': 'eno2',
                   'bridge_stp': 'off', 'bridge_fd': '0', 'bridge_vlan_aware': 1, 'bridge_vids': '2-100'},
                  {'iface': 'eno1', 'type': 'eth', 'method': 'manual', 'method6': 'manual', 'families': ['inet'],
                   'priority': 2, 'active': 1, 'exists': 1},
                  {'iface': 'eno2', 'type': 'eth', 'method': 'manual', 'method6': 'manual', 'families': ['inet'],
                   'priority': 5, 'active': 1, 'exists': 1}]
        wanted = v.get('type')
        if wanted in ('any_bridge', 'any_local_bridge'):
            return [i for i in ifaces if i['type'] == 'bridge']
        return [i for i in ifaces if not wanted or i['type'] == wanted]

    async def _bed_node_status(self, v, user):
        s = dict(self._node_stats(True))
        s['mem'] = self.mem_used.get(v.get('node'), s['mem'])  # set by /node-memory
        mem, disk = s['maxmem'] - s['mem'], s['maxdisk'] - s['disk']
        return {'cpu': s['cpu'], 'wait': 0, 'uptime': s['uptime'], 'loadavg': ['0.08', '0.05', '0.01'],
                'cpuinfo': {'cpus': s['maxcpu'], 'cores': s['maxcpu'], 'sockets': 1, 'model': 'fake', 'mhz': '2400'},
                'memory': {'total': s['maxmem'], 'used': s['mem'], 'free': mem, 'available': mem},
                'rootfs': {'total': s['maxdisk'], 'used': s['disk'], 'free': disk, 'avail': disk},
                'swap': {'total': 0, 'used': 0, 'free': 0}, 'ksm': {'shared': 0},
                'pveversion': 'pve-manager/{0}/fakepve'.format(self.version), 'kversion': 'Linux 6.14.8-2-pve'}

    async def _task_list(self, request):
        # PVE's Tasks.pm reads `source` (default `archive`): the archive holds ended tasks only, `active`
        # the running ones, `all` both; fakepve lists both whatever it is given. A client that looks for
        # a task it may have started must ask for `all`, as on a real node.
        p = self._verify(request, await params(request))
        source = p.get('source', 'archive')
        node, user, vmid = request.match_info['node'], request[USER_KEY], p.get('vmid')
        audit = self.allowed(user, '/nodes/' + node, 'Sys.Audit')

        def listed(task):
            running = task.get('exitstatus') is None
            return (task['node'] == node and (vmid is None or task['id'] == str(vmid))
                    and (audit or self._task_owner(user, task))
                    and (source == 'all' or running == (source == 'active')))
        data = sorted((self._task_view(t, True) for t in self.tasklog if listed(t)), key=lambda t: -t['starttime'])
        start = p.get('start', 0)
        return web.json_response({'data': data[start:start + p.get('limit', 50)]})

    def _task_view(self, task, listing=False):
        # fakepve's tasks end OK or with an error; a warned task shows PVE's `WARNINGS: n` instead of OK.
        data = super()._task_view(task, listing)
        key = 'status' if listing else 'exitstatus'
        if self.warned.get(task['upid']) and data.get(key) == 'OK':
            data[key] = 'WARNINGS: {0}'.format(self.warned[task['upid']])
        return data

    async def task(self, node, ttype, tid, user, body, *args, **kwargs):
        # Every PVE worker goes through here, so one wrapper gives task errors, warnings, extra log
        # lines and the authorized_keys files without touching fakepve's handlers.
        error, warnings, lines = (self.effects[kind, ttype].popleft() if self.effects[kind, ttype] else None
                                  for kind in ('error', 'warning', 'log'))
        keys = self.create_keys.pop(tid, None) if ttype in ('vzcreate', 'vzrestore') else None
        plan = self.restore_plans.pop(tid, None) if ttype == 'vzrestore' else None
        if ttype == 'hamigrate' and tid in self.ha_requests:
            body = self._ha_request_body(tid, self.ha_requests.pop(tid))  # instead of fakepve's wait-and-move
        index = len(self.tasklog)  # fakepve appends the task's record here before it runs the body

        check = (self.download_checks[tid].popleft()
                 if ttype == 'download' and self.download_checks.get(tid) else None)

        async def wrapped():
            record = self.tasklog[index]
            record['log'].extend(lines or ())
            size = None
            if check is not None:
                size = await check[0]()
                record['log'].append('downloaded {0} bytes'.format(size))
            if error is not None:
                message, after = error
                await self.pause(after)  # lets a poller see the task running first
                ct = self.ct(tid) if ttype in ('vzcreate', 'vzrestore') else None
                if ct is not None and ct.lock == 'create':
                    self._drop(ct)  # PVE removes a container whose create failed
                raise TaskError(message)
            if plan is not None:
                self._restore_task_start(tid, plan, record['log'])
            note = await body()
            if plan is not None:
                self._restore_task_end(tid, plan, record['log'])
            if size is not None:
                volume = self.storages[tid].get('volumes', {}).get('vztmpl/' + check[1])
                if volume is not None:
                    volume['size'] = size
            if keys:
                self._write_keys(tid, *keys)
            if ttype == 'vzdestroy':
                self._remove_keys(tid)
            if warnings:
                record['log'].extend('WARN: ' + w for w in warnings)
                record['log'] = WarnedLog(record['log'])
                self.warned[record['upid']] = record['log'].warnings()
            return note
        return await super().task(node, ttype, tid, user, wrapped, *args, **kwargs)

    def _write_keys(self, vmid, keys, files):
        self._remove_keys(vmid)
        for name in files:
            atomic_write(os.path.join(self.keys_dir, name), keys)
        self.key_files[vmid] = files

    def _remove_keys(self, vmid):
        for name in self.key_files.pop(vmid, []):
            remove(os.path.join(self.keys_dir, name))


class WarnedLog(list):
    """A task log whose closing `TASK OK` (appended by fakepve after the body) reads as PVE's warnings line."""

    def warnings(self):
        return sum(line.startswith('WARN: ') for line in self)

    def append(self, line):
        super().append('TASK WARNINGS: {0}'.format(self.warnings()) if line == 'TASK OK' else line)


# ------------------------------------------------------------------ control API

def field(data, key, kind, default=None):
    """data[key] checked against kind (an int is a fine float), else a 400 naming the field."""
    value = data.get(key, default)
    if value is None:
        raise refuse('missing field {0!r}'.format(key))
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind or (kind in (int, float) and value < 0):
        raise refuse('field {0!r} must be a{1} {2}'.format(key, ' non-negative' * (kind in (int, float)),
                                                               kind.__name__))
    return value


def method_and_path(data):
    """A rule's method and path: a path suffix, or a schema path template whole (`{...}` for every part that
    varies); a half-template like /nodes/pve1/lxc/{vmid}/migrate would match nothing, so it is refused."""
    method, path = field(data, 'method', str).upper(), field(data, 'path', str)
    path = path[len('/api2/json'):] if path.startswith('/api2/json/') else path
    if not path.startswith('/'):
        raise refuse("'path' must start with / (relative to /api2/json)")
    if '{' in path and path.rstrip('/') not in schema_paths():
        raise refuse("'path' {0!r} has placeholders but is not one of PVE's path templates (write every varying "
                     "part as its placeholder, e.g. /nodes/{{node}}/lxc/{{vmid}}/migrate)".format(path))
    return method, path


def schema_paths():
    from fakepve import schema as pve_schema
    return pve_schema.load().paths


def task_type(data):
    value = field(data, 'type', str)
    if not re.fullmatch(r'[a-z0-9_-]+', value):
        raise refuse('bad task type {0!r} (vzcreate, vzstart, vzstop, vzdestroy, ...)'.format(value))
    return value


def messages(data, key='message'):
    value = data.get(key)
    value = [value] if isinstance(value, str) and key == 'message' else value
    if not (isinstance(value, list) and value and all(isinstance(m, str) and m for m in value)):
        raise refuse('field {0!r} must be a non-empty string or list of strings'.format(key))
    return value


def control_app(pve, initial_scale):
    routes = web.RouteTableDef()

    def post(path):
        # Every control call takes a JSON object and answers {"ok": true} or {"ok": false, "error": ...}.
        def register(fn):
            async def handler(request):
                try:
                    data = await request.json() if request.can_read_body else {}
                except ValueError:
                    raise refuse('body is not valid JSON') from None
                if not isinstance(data, dict):
                    raise refuse('body must be a JSON object')
                fn(data)
                return web.json_response({'ok': True})
            return routes.post(path)(handler)
        return register

    @routes.get('/health')
    async def health(request):
        return web.json_response({
            'ok': True, 'url': pve.url, 'time_scale': pve.time_scale, 'delay': pve.delay,
            'requests': pve.bed_requests, 'answers_lost': pve.answers_lost, 'edits_made': pve.edits_made,
            'nodes': {n: s.get('online', True) for n, s in sorted(pve.nodes.items())},
            'failures': [{'method': m, 'path': p, 'times': r['times']} for (m, p), r in pve.failures.items()],
            'containers': sorted(ct.vmid for ct in pve.cts)})

    @post('/fail')
    def fail(data):
        method, path = method_and_path(data)
        times = field(data, 'times', int, 1) or None  # fakepve: None = every request
        try:
            if data.get('error') is not None:  # one of PVE's own errors, from fakepve's catalogue
                pve.fail(method, path, error=field(data, 'error', str), times=times)
            else:
                pve.fail(method, path, field(data, 'status', int, 500), field(data, 'message', str), times=times)
        except (TypeError, ValueError) as e:
            raise refuse(str(e)) from None

    @routes.get('/files/{name}')
    async def files(request):
        # Plain HTTP downloads for download-url: the files a test put in DIR/files.
        name = request.match_info['name']
        path = os.path.join(pve.files_dir, name)
        if '/' in name or name.startswith('.') or not os.path.isfile(path):
            raise refuse('no file {0!r} in {1}'.format(name, pve.files_dir), 404)
        return web.FileResponse(path)

    @routes.get('/calls')
    async def calls(request):
        # Every API call since the start (or the last POST /calls-reset), by method and path template.
        return web.json_response({'calls': [[m, p, n] for (m, p), n in sorted(pve.bed_calls.items())]})

    post('/calls-reset')(lambda data: pve.bed_calls.clear())

    @post('/lose-answer')
    def lose_answer(data):
        # Like /fail, but after fakepve has carried the request out.
        method, path = method_and_path(data)
        how = field(data, 'how', str, '500')
        if how not in ('500', 'drop'):
            raise refuse("'how' must be '500' or 'drop'")
        pve.lost_answers[method, path] = {'times': field(data, 'times', int, 1) or None, 'how': how}

    @post('/edit-after')
    def edit_after(data):
        # Once the next matching request is answered, another user changes container `vmid`'s config.
        method, path = method_and_path(data)
        changes = data.get('set') or {}
        if not isinstance(changes, dict):
            raise refuse("'set' must be an object of config keys")
        deletes = data.get('delete') or []
        if not isinstance(deletes, list):
            raise refuse("'delete' must be a list of config keys")
        pve.edits_after[method, path] = {'skip': field(data, 'skip', int, 0),
                                         'times': field(data, 'times', int, 1) or None, 'vmid': field(data, 'vmid', int),
                                         'set': {k: str(v) for k, v in changes.items()}, 'delete': deletes}

    @post('/flaky')
    def flaky(data):
        # fakepve's own network trouble: a share of requests dropped (before acting) or hung.
        seed = data.get('seed')
        if seed is not None and type(seed) is not int:
            raise refuse("field 'seed' must be an integer")
        pve.flaky_network(drop_rate=field(data, 'drop_rate', float, 0.0), hang_rate=field(data, 'hang_rate', float, 0.0),
                          hang_secs=field(data, 'hang_secs', float, 5.0), seed=seed)
        if seed is not None:
            pve._random.seed(seed)

    post('/task-error')(lambda data: pve.effects['error', task_type(data)].append(
        ('\n'.join(messages(data)), field(data, 'after', float, 0.0))))
    post('/task-warning')(lambda data: pve.effects['warning', task_type(data)].append(messages(data)))
    post('/task-log')(lambda data: pve.effects['log', task_type(data)].append(messages(data, 'lines')))
    post('/slow')(lambda data: setattr(pve, 'delay', field(data, 'seconds', float)))
    post('/time-scale')(lambda data: setattr(pve, 'time_scale', field(data, 'scale', float)))
    post('/reset')(lambda data: pve.bed_reset(initial_scale))
    post('/expire-tickets')(lambda data: pve.tickets.clear())  # as if every login's two hours were up

    @post('/task-secs')
    def task_secs(data):
        known = sorted(set(pve.ct_secs) | {'start', 'stop', 'shutdown'})
        for key in data:
            if key not in known:
                raise refuse('unknown task {0!r}; known: {1}'.format(key, ', '.join(known)))
            if key in pve.ct_secs:
                pve.ct_secs[key] = field(data, key, float)
            else:  # fakepve keeps these per container: set them on those that exist and those to come
                pve.ct_defaults[key + '_secs'] = field(data, key, float)
                for ct in pve.cts:
                    setattr(ct, key + '_secs', pve.ct_defaults[key + '_secs'])

    @post('/node-memory')
    def node_memory(data):
        # Lets a test give nodes different free memory (placement); /nodes/{node}/status reports it.
        node = field(data, 'node', str)
        if node not in pve.nodes:
            raise refuse('no such node {0!r}; nodes: {1}'.format(node, ', '.join(sorted(pve.nodes))), 404)
        pve.mem_used[node] = field(data, 'used', int)

    @post('/offline')
    def offline(data):
        node = field(data, 'node', str)
        if node not in pve.nodes:
            raise refuse('no such node {0!r}; nodes: {1}'.format(node, ', '.join(sorted(pve.nodes))), 404)
        pve.set_node_offline(node, field(data, 'offline', bool, True))

    @post('/ha')
    def ha(data):
        # Makes a container (or VM) HA-managed with that requested state, or unmanaged with null. Nothing is
        # started or stopped by this; fakepve's start/stop/migrate of a managed guest go through HA from now on.
        vmid = field(data, 'vmid', int)
        guest = pve.guest(vmid)
        if guest is None:
            raise refuse('no guest {0}; guests: {1}'.format(vmid, ', '.join(
                str(g.vmid) for g in sorted(list(pve.cts) + list(pve.vms), key=lambda g: g.vmid))), 404)
        state = data.get('state')
        if state not in (None, 'started', 'stopped'):
            raise refuse("field 'state' must be \"started\", \"stopped\" or null")
        guest.ha_state = state

    post('/ha-delay')(lambda data: setattr(pve, 'ha_delay', field(data, 'secs', float)))

    app = web.Application()
    app.add_routes(routes)
    return app


# ------------------------------------------------------------------ main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--host', default='127.0.0.1', help='loopback address for both servers')
    p.add_argument('--port', type=int, default=0, help='PVE API (TLS) port; 0 picks a free one')
    p.add_argument('--control-port', type=int, default=0, help='control API port; 0 picks a free one')
    p.add_argument('--dir', required=True, help='where the certificate, key and ready.json go')
    p.add_argument('--nodes', default='pve1', help='comma-separated node names')
    p.add_argument('--token-id', default='root@pam!pvefleet')
    p.add_argument('--token-secret', help='API token secret (random if omitted; reported in ready.json)')
    p.add_argument('--root-password', help="root@pam's password, for a ticket login (random if omitted)")
    p.add_argument('--keys-dir', help="write each created CT's ssh-public-keys to KEYS_DIR/<ip> and /vmid-<vmid>")
    p.add_argument('--time-scale', type=float, default=0.0,
                   help='real seconds per PVE second; 0 (default) ends every task before its request returns')
    p.add_argument('--template', action='append', help='vztmpl file on storage local (repeatable; default: '
                   + ', '.join(DEFAULT_TEMPLATES) + ')')
    args = p.parse_args(argv)
    if not re.fullmatch(r'127(\.\d{1,3}){3}|localhost', args.host):
        p.error('--host must be a loopback address: the fake has no real security')
    args.nodes = [n for n in args.nodes.split(',') if n]
    if not args.nodes:
        p.error('--nodes names no node')
    return args


async def serve(args):
    os.makedirs(args.dir, exist_ok=True)
    if args.keys_dir:
        os.makedirs(args.keys_dir, exist_ok=True)
    certfile, keyfile, der = make_cert(args.dir, hosts=(args.host,))
    root_password = args.root_password or secrets.token_hex(16)
    pve = BedPve(keys_dir=args.keys_dir, host=args.host, port=args.port, user='root@pam', password=root_password)
    pve.files_dir = os.path.join(os.path.abspath(args.dir), 'files')
    os.makedirs(pve.files_dir, exist_ok=True)
    pve.time_scale = args.time_scale
    pve.nodes = {}
    for node in args.nodes:
        pve.add_node(node)
    secret = args.token_secret or secrets.token_hex(16)
    pve.apitokens[args.token_id] = secret  # no ACLs are set, so every token has every privilege
    for name in args.template or DEFAULT_TEMPLATES:
        # Once `local` lists a template, a create naming any other fails like PVE ("volume ... does not exist").
        pve.store_file('local', name, TEMPLATE_SIZE, content='vztmpl')

    await pve.start(certfile, keyfile)
    runner = web.AppRunner(control_app(pve, args.time_scale), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.control_port).start()
    control_port = runner.addresses[0][1]

    fingerprint = ':'.join(re.findall('..', hashlib.sha256(der).hexdigest().upper()))
    ready = {'url': pve.url, 'control_url': 'http://{0}:{1}'.format(args.host, control_port),
             'fingerprint': fingerprint, 'cafile': os.path.abspath(certfile),
             'token_id': args.token_id, 'token_secret': secret, 'nodes': args.nodes, 'files_dir': pve.files_dir}
    ready_path = os.path.join(args.dir, 'ready.json')
    atomic_write(ready_path, json.dumps(ready, indent=1) + '\n')
    print('READY ' + json.dumps(ready), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # A stale ready.json would let a later test talk to a dead server.
    remove(ready_path)
    remove(keyfile)
    await runner.cleanup()
    await pve.stop()


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format='fakepve_launcher: %(message)s')
    asyncio.run(serve(parse_args()))


if __name__ == '__main__':
    main()
