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
import signal
import sys
import tempfile
import urllib.parse
import urllib.request

from aiohttp import web
from fakepve import FakePve, PveError, TaskError
from fakepve.server import API, params
from fakepve.certs import make_cert

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
        ct = self.ct(vmid)  # None when its create task has already failed
        if ct is not None:
            vars(ct).update(self.ct_defaults)
        return upid

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
            note = await body()
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
        method, path = field(data, 'method', str).upper(), field(data, 'path', str)
        path = path[len('/api2/json'):] if path.startswith('/api2/json/') else path
        if not path.startswith('/'):
            raise refuse("'path' must start with / (relative to /api2/json)")
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
        method, path = field(data, 'method', str).upper(), field(data, 'path', str)
        path = path[len('/api2/json'):] if path.startswith('/api2/json/') else path
        if not path.startswith('/'):
            raise refuse("'path' must start with / (relative to /api2/json)")
        how = field(data, 'how', str, '500')
        if how not in ('500', 'drop'):
            raise refuse("'how' must be '500' or 'drop'")
        pve.lost_answers[method, path] = {'times': field(data, 'times', int, 1) or None, 'how': how}

    @post('/edit-after')
    def edit_after(data):
        # Once the next matching request is answered, another user changes container `vmid`'s config.
        method, path = field(data, 'method', str).upper(), field(data, 'path', str)
        path = path[len('/api2/json'):] if path.startswith('/api2/json/') else path
        if not path.startswith('/'):
            raise refuse("'path' must start with / (relative to /api2/json)")
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
